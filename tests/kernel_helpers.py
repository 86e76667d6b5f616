"""Helpers for the kernel tests and the GPU check (no tests here, no pytest import).

Judging rule: a result computed in some dtype passes when its max error against the float64
reference (run on the same rounded inputs) is within a few times the error PyTorch itself makes
on those inputs (the reference run in that dtype), with a floor of a few ulps at the reference's
scale. Used by tests/test_kernel_*.py (CPU, Triton interpreter) and by benchmarks/check_kernels.py
(GPU, bf16 included), so both judge the same way.
"""
import torch

from hybengine.kernels import group_norm_silu, group_norm_silu_reference, hybrid_loss, hybrid_loss_reference

FLOOR_ULPS = 8  # ulps at the reference's largest magnitude
TORCH_FACTOR = 4  # times PyTorch's own error on the same inputs
GN_NAMES = ("y", "dx", "dweight", "dbias", "dscale", "dshift")
LOSS_NAMES = ("denoise", "mask", "dF")
W_MASK = 0.3


def max_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return (a.double() - ref.double()).abs().max().item() if ref.numel() else 0.0


def assert_matches(name: str, ours: torch.Tensor, ref64: torch.Tensor, torch_lowp: torch.Tensor | None,
                   dtype: torch.dtype) -> float:
    """ours (computed in `dtype`) against the float64 reference; returns the error."""
    assert ours.shape == ref64.shape, f"{name}: shape {tuple(ours.shape)} != {tuple(ref64.shape)}"
    assert torch.isfinite(ours).all(), f"{name}: non-finite values"
    scale = ref64.abs().max().item() if ref64.numel() else 0.0
    tol = FLOOR_ULPS * torch.finfo(dtype).eps * max(scale, 1e-6)
    if torch_lowp is not None:
        tol = max(tol, TORCH_FACTOR * max_err(torch_lowp, ref64))
    err = max_err(ours, ref64)
    assert err <= tol, f"{name}: max error {err:.3e} > tolerance {tol:.3e} (reference max |.| {scale:.3e})"
    return err


def shifted(*shape: int, generator: torch.Generator) -> torch.Tensor:
    """-2.3 + 0.5*randn in float64: a large mean exposes E[x^2]-E[x]^2 cancellation."""
    return -2.3 + 0.5 * torch.randn(*shape, generator=generator, dtype=torch.float64)


# ----------------------------------------------------------------------------- group_norm_silu


def gn_inputs(n, c, h, w, *, scale=True, shift=True, channels_last=False, seed=0, device="cpu"):
    """float64 x (shifted), weight, bias, scale, shift and an upstream gradient dy."""
    g = torch.Generator().manual_seed(seed)
    x = shifted(n, c, h, w, generator=g)
    weight = 1 + 0.5 * torch.randn(c, generator=g, dtype=torch.float64)
    bias = 0.5 * torch.randn(c, generator=g, dtype=torch.float64)
    s = 0.3 * torch.randn(n, c, generator=g, dtype=torch.float64) if scale else None
    t = 0.5 * torch.randn(n, c, generator=g, dtype=torch.float64) if shift else None
    dy = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    x, weight, bias, s, t, dy = (v.to(device) if v is not None else None for v in (x, weight, bias, s, t, dy))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, weight, bias, s, t, dy


def gn_outputs_and_grads(fn, x, weight, bias, s, t, dy, groups):
    """(y, dx, dweight, dbias, dscale, dshift) of fn by autograd; None where an input is None."""
    leaves = [v.detach().clone().requires_grad_() if v is not None else None for v in (x, weight, bias, s, t)]
    y = fn(leaves[0], leaves[1], leaves[2], groups, 1e-5, leaves[3], leaves[4])
    y.backward(dy.to(y.dtype))
    return (y.detach(), *[v.grad if v is not None else None for v in leaves])


def check_group_norm_silu(inputs, groups, dtype, fn=group_norm_silu) -> dict[str, float]:
    """fn in `dtype` vs the float64 reference on the same rounded inputs; returns errors by name."""
    x, weight, bias, s, t, dy = inputs
    rounded = [v.to(dtype) if v is not None else None for v in (x, weight, bias, s, t)]
    dy = dy.to(dtype)
    as64 = [v.double() if v is not None else None for v in rounded]
    ref = gn_outputs_and_grads(group_norm_silu_reference, *as64, dy.double(), groups)
    lowp = gn_outputs_and_grads(group_norm_silu_reference, *rounded, dy, groups)
    ours = gn_outputs_and_grads(fn, *rounded, dy, groups)
    assert ours[0].dtype == dtype and ours[0].stride() == rounded[0].stride(), "y keeps dtype and layout"
    assert ours[1].stride() == rounded[0].stride(), "dx keeps the layout"
    errors = {}
    for name, o, r, lp in zip(GN_NAMES, ours, ref, lowp, strict=True):
        if r is None:
            assert o is None, f"{name}: expected no gradient"
            continue
        assert o.dtype == lp.dtype, f"{name}: dtype {o.dtype} != {lp.dtype}"
        errors[name] = assert_matches(name, o, r, lp, dtype)
    return errors


def check_split_vs_whole(run, lo, groups, dtype, split_size, whole_size) -> None:
    """run(inputs, groups, size) -> (outputs, mean, rstd) of a launcher with a forced split size: the
    split run's outputs and gradients against float64, its statistics against the whole run's."""
    split, mean, rstd = run(lo, groups, split_size)
    _, mean_whole, rstd_whole = run(lo, groups, whole_size)
    ref = gn_outputs_and_grads(group_norm_silu_reference, *[v.double() for v in lo[:5]], lo[5].double(), groups)
    lowp = gn_outputs_and_grads(group_norm_silu_reference, *lo[:5], lo[5], groups)
    for name, o, r, lp in zip(GN_NAMES, split, ref, lowp, strict=True):
        assert_matches(name, o, r, lp, dtype)
    torch.testing.assert_close(mean, mean_whole, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rstd, rstd_whole, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- hybrid_loss


def loss_inputs(b, n_img, k, h, w, *, channels_last=False, ignore_index=-100, seed=0, device="cpu"):
    """float64 (out, x_n, x, y, c_skip, c_out, lam) with EDM coefficients, and upstream grads.

    A quarter of the pixels are ignored, and with b >= 3 the last sample entirely (n_valid = 0).
    """
    g = torch.Generator().manual_seed(seed)
    f = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    out = 2 * f(b, n_img + k, h, w)
    x = f(b, n_img, h, w)
    x_n = x + 1.5 * f(b, n_img, h, w)
    y = torch.randint(0, k, (b, h, w), generator=g)
    y[torch.rand(b, h, w, generator=g) < 0.25] = ignore_index
    if b >= 3:
        y[-1] = ignore_index
    sigma = torch.exp(-1.2 + 1.2 * f(b))
    c_skip = 0.25 / (sigma**2 + 0.25)
    c_out = sigma * 0.5 / (sigma**2 + 0.25).sqrt()
    lam = (sigma**2 + 0.25) / (sigma * 0.5) ** 2
    tensors = [v.to(device) for v in (out, x_n, x, y, c_skip, c_out, lam)]
    if channels_last:
        tensors[0], tensors[1] = (v.contiguous(memory_format=torch.channels_last) for v in tensors[:2])
    return tuple(tensors), (f(b).to(device), f(b).to(device))


def loss_terms_and_grad(fn, inputs, upstream, ignore_index=-100):
    """(denoise, mask, dF) by autograd with the given upstream grads."""
    out, *rest = inputs
    out = out.detach().clone().requires_grad_()
    denoise, mask = fn(out, *rest, W_MASK, ignore_index)
    ((denoise * upstream[0].to(denoise.dtype)).sum() + (mask * upstream[1].to(mask.dtype)).sum()).backward()
    return denoise.detach(), mask.detach(), out.grad


def check_hybrid_loss(inputs, upstream, dtype, ignore_index=-100, fn=hybrid_loss) -> dict[str, float]:
    """out, x_n in `dtype` (x stays fp32, as data often does) vs the float64 reference."""
    out, x_n, x, y, c_skip, c_out, lam = inputs
    rounded = (out.to(dtype), x_n.to(dtype), x.float(), y, c_skip.float(), c_out.float(), lam.float())
    as64 = [t.double() if t.is_floating_point() else t for t in rounded]
    ref = loss_terms_and_grad(hybrid_loss_reference, as64, upstream, ignore_index)
    lowp = loss_terms_and_grad(hybrid_loss_reference, rounded, upstream, ignore_index)
    ours = loss_terms_and_grad(fn, rounded, upstream, ignore_index)
    assert ours[0].dtype == ours[1].dtype == torch.float32
    assert ours[2].dtype == dtype and ours[2].stride() == rounded[0].stride(), "dF keeps dtype and layout"
    return {name: assert_matches(name, o, r, lp, dtype)
            for name, o, r, lp in zip(LOSS_NAMES, ours, ref, lowp, strict=True)}


# ----------------------------------------------------------------------------- a tiny U-Net block


class TinyBlock(torch.nn.Module):
    """conv -> GroupNorm-SiLU modulated by a noise embedding -> conv to I+K channels -> joint loss;
    both fused ops run `body` (kernels/bodies.py)."""

    def __init__(self, n_img: int = 3, k: int = 2, width: int = 6, groups: int = 3, emb: int = 4,
                 body: str = "auto"):
        super().__init__()
        self.groups, self.body = groups, body
        self.conv_in = torch.nn.Conv2d(n_img, width, 3, padding=1)
        self.norm_weight = torch.nn.Parameter(1 + 0.1 * torch.randn(width))
        self.norm_bias = torch.nn.Parameter(0.1 * torch.randn(width))
        self.emb = torch.nn.Linear(emb, 2 * width)
        self.conv_out = torch.nn.Conv2d(width, n_img + k, 3, padding=1)

    def forward(self, x_n, x, y, c_skip, c_out, lam, noise_emb):
        scale, shift = self.emb(noise_emb).chunk(2, dim=1)
        h = group_norm_silu(self.conv_in(x_n), self.norm_weight, self.norm_bias, self.groups, 1e-5, scale, shift,
                            body=self.body)
        out = self.conv_out(h)
        denoise, mask = hybrid_loss(out, x_n, x, y, c_skip, c_out, lam, 0.5, body=self.body)
        return (denoise + mask).mean(), out


def tiny_batch(b=2, n_img=3, k=2, h=7, w=9, device="cpu"):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, n_img, h, w, generator=g)
    x_n = x + torch.randn(b, n_img, h, w, generator=g)
    y = torch.randint(0, k, (b, h, w), generator=g)
    coeffs = [0.5 + torch.rand(b, generator=g) for _ in range(3)]
    return tuple(v.to(device) for v in (x_n, x, y, *coeffs, torch.randn(b, 4, generator=g)))


def loss_and_grads(model, inputs):
    model.zero_grad()
    loss, out = model(*inputs)
    loss.backward()
    return loss.detach(), out.detach(), [p.grad.clone() for p in model.parameters()]


def assert_compiled_matches_eager(model, inputs) -> None:
    """Loss, input gradient and parameter gradients of torch.compile(model, fullgraph=True) equal eager's."""
    eager = loss_and_grads(model, inputs)
    compiled = loss_and_grads(torch.compile(model, fullgraph=True), inputs)
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compiled[1], eager[1], rtol=1e-5, atol=1e-5)
    for (name, _), a, b in zip(model.named_parameters(), compiled[2], eager[2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")


# ----------------------------------------------------------------------------- upsample_conv

UPSAMPLE_NAMES = ("y", "dx", "dweight", "dbias")


def upsample_inputs(n, c, o, h, w, *, channels_last=False, seed=0, device="cpu"):
    """float64 x, weight (o, c, 3, 3), bias and an upstream gradient dy (n, o, 2h, 2w)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    weight = torch.randn(o, c, 3, 3, generator=g, dtype=torch.float64) / (3 * c**0.5)
    bias = torch.randn(o, generator=g, dtype=torch.float64)
    dy = torch.randn(n, o, 2 * h, 2 * w, generator=g, dtype=torch.float64)
    x, weight, bias, dy = (v.to(device) for v in (x, weight, bias, dy))
    if channels_last:
        x, dy = x.contiguous(memory_format=torch.channels_last), dy.contiguous(memory_format=torch.channels_last)
    return x, weight, bias, dy


def check_upsample_conv(inputs, dtype) -> dict[str, float]:
    """The sub-pixel form in `dtype` vs the float64 reference on the same rounded inputs."""
    from hybengine.kernels.upsample_conv import upsample_conv_reference, upsample_conv_subpixel

    def run(fn, x, weight, bias, dy):
        leaves = [v.detach().clone().requires_grad_() for v in (x, weight, bias)]
        y = fn(*leaves)
        y.backward(dy)
        return (y.detach(), *(v.grad for v in leaves))

    x, weight, bias, dy = (v.to(dtype) for v in inputs)
    ref = run(upsample_conv_reference, *(v.double() for v in (x, weight, bias, dy)))
    lowp = run(upsample_conv_reference, x, weight, bias, dy)
    ours = run(upsample_conv_subpixel, x, weight, bias, dy)
    assert ours[0].dtype == dtype and ours[0].stride() == lowp[0].stride(), "y keeps dtype and layout"
    return {name: assert_matches(name, a, r, lo, dtype)
            for name, a, r, lo in zip(UPSAMPLE_NAMES, ours, ref, lowp, strict=True)}
