"""The "math" body of GroupNorm-SiLU: the forward and backward formulas of the package docstring in
plain torch (no autograd; fp64 for fp64 inputs). It runs wherever Triton cannot and keeps the
launchers' contract (`design.group_norm_silu_fwd_triton`)."""
import torch


def _param_grads(  # the math path's version of param_grads._param_grads_kernel
    s1: torch.Tensor,  # (N, C) sum_hw dh
    s2: torch.Tensor,  # (N, C) sum_hw dh * xhat
    weight: torch.Tensor,
    bias: torch.Tensor,
    scale: torch.Tensor | None,
    shift: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """dweight, dbias (C,); dscale, dshift (N, C), in the dtypes of their inputs (weight's if absent)."""
    w, b = weight.to(s1.dtype), bias.to(s1.dtype)
    dshift = s1
    dscale = w * s2 + b * s1
    du1, du2 = (s1, s2) if scale is None else (s1 * (1 + scale.to(s1.dtype)), s2 * (1 + scale.to(s1.dtype)))
    dweight, dbias = du2.sum(dim=0), du1.sum(dim=0)
    mod_dtype = lambda t: weight.dtype if t is None else t.dtype
    return (
        dweight.to(weight.dtype),
        dbias.to(bias.dtype),
        dscale.to(mod_dtype(scale)),
        dshift.to(mod_dtype(shift)),
    )


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _effective_affine(weight, bias, scale, shift, n: int, ct: torch.dtype):
    """a = w*(1+s), bb = b*(1+s)+t, both (N, C) in `ct`."""
    a, bb = weight.to(ct).expand(n, -1), bias.to(ct).expand(n, -1)
    if scale is not None:
        a, bb = a * (1 + scale.to(ct)), bb * (1 + scale.to(ct))
    if shift is not None:
        bb = bb + shift.to(ct)
    return a, bb


def _xhat(x, mean, rstd, groups: int, ct: torch.dtype) -> torch.Tensor:
    n, c = x.shape[:2]
    return ((x.to(ct).reshape(n, groups, -1) - mean[..., None]) * rstd[..., None]).view(n, c, -1)


def group_norm_silu_fwd_math(x, weight, bias, scale, shift, groups: int, eps: float):
    """Same contract as `group_norm_silu_fwd_triton`, in plain torch (fp64 for fp64 inputs)."""
    ct = _compute_dtype(x)
    n, c = x.shape[:2]
    xg = x.to(ct).reshape(n, groups, -1)
    mean = xg.mean(dim=2)
    rstd = torch.rsqrt((xg - mean[..., None]).square().mean(dim=2) + eps)  # two-pass variance
    a, bb = _effective_affine(weight, bias, scale, shift, n, ct)
    h = _xhat(x, mean, rstd, groups, ct) * a[..., None] + bb[..., None]
    y = torch.empty_like(x)
    y.copy_((h * torch.sigmoid(h)).view(x.shape))
    return y, mean, rstd


def group_norm_silu_bwd_math(dy, x, weight, bias, scale, shift, mean, rstd, groups: int, eps: float):
    """Same contract as `group_norm_silu_bwd_triton`: the backward formulas of the module docstring."""
    ct = _compute_dtype(x)
    n, c = x.shape[:2]
    xhat = _xhat(x, mean, rstd, groups, ct)
    a, bb = _effective_affine(weight, bias, scale, shift, n, ct)
    h = xhat * a[..., None] + bb[..., None]
    sig = torch.sigmoid(h)
    dh = dy.to(ct).reshape(n, c, -1) * sig * (1 + h * (1 - sig))
    s1, s2 = dh.sum(dim=2), (dh * xhat).sum(dim=2)
    m = (c // groups) * xhat.shape[2]
    c1 = (a * s1).view(n, groups, -1).sum(dim=2) / m
    c2 = (a * s2).view(n, groups, -1).sum(dim=2) / m
    dxhat = (dh * a[..., None]).reshape(n, groups, -1)
    dx = rstd[..., None] * (dxhat - c1[..., None] - xhat.view(n, groups, -1) * c2[..., None])
    out = torch.empty_like(x)
    out.copy_(dx.view(x.shape))
    return (out, *_param_grads(s1, s2, weight, bias, scale, shift))
