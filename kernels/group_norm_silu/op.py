"""The public GroupNorm-SiLU op: `torch.library.custom_op`s (fake and autograd registrations) for
torch.compile, a small autograd.Function for eager calls, and the bodies they dispatch to.

Bodies (kernels/bodies.py): "triton" (design.py, which applies the requested design), "math"
(math_path.py) and, where built, "native" (kernels/native). The op carries the body and the Triton
design as string arguments (`body`, `design`; hybengine.ops binds them once per run), so a compiled
graph holds the choice as a constant and nothing is read from a module global.
"""
import torch

from .. import bodies
from .design import group_norm_silu_bwd_triton, group_norm_silu_fwd_triton
from .math_path import _compute_dtype, group_norm_silu_bwd_math, group_norm_silu_fwd_math

BODIES = {"triton": bodies.Impl("triton", group_norm_silu_fwd_triton, group_norm_silu_bwd_triton),
          "math": bodies.Impl("math", group_norm_silu_fwd_math, group_norm_silu_bwd_math)}


def _fwd_body(x, weight, bias, scale, shift, groups, eps, design, body):
    impl = bodies.implementation("group_norm_silu", body, x, BODIES)
    extra = {"design": design} if impl.name == "triton" else {}
    return impl.fwd(x, weight, bias, scale, shift, groups, eps, **extra)


def _bwd_body(dy, x, weight, bias, scale, shift, mean, rstd, groups, eps, design, body):
    impl = bodies.implementation("group_norm_silu", body, x, BODIES)
    extra = {"design": design} if impl.name == "triton" else {}
    return impl.bwd(dy, x, weight, bias, scale, shift, mean, rstd, groups, eps, **extra)


# ----------------------------------------------------------------------------- op registration


@torch.library.custom_op("hybengine::group_norm_silu_fwd", mutates_args=())
def group_norm_silu_fwd_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    scale: torch.Tensor | None,
    shift: torch.Tensor | None,
    groups: int,
    eps: float,
    design: str = "auto",
    body: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, mean, rstd); the body is `body` (bodies.implementation), the Triton design `design`."""
    return _fwd_body(x, weight, bias, scale, shift, groups, eps, design, body)


@group_norm_silu_fwd_op.register_fake
def _(x, weight, bias, scale, shift, groups, eps, design="auto", body="auto"):
    stats = x.new_empty((x.shape[0], groups), dtype=_compute_dtype(x))
    return torch.empty_like(x), stats, torch.empty_like(stats)


@torch.library.custom_op("hybengine::group_norm_silu_bwd", mutates_args=())
def group_norm_silu_bwd_op(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    scale: torch.Tensor | None,
    shift: torch.Tensor | None,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    groups: int,
    eps: float,
    design: str = "auto",
    body: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dweight, dbias, dscale, dshift); dscale/dshift are (N, C) even when scale/shift are None."""
    return _bwd_body(dy, x, weight, bias, scale, shift, mean, rstd, groups, eps, design, body)


@group_norm_silu_bwd_op.register_fake
def _(dy, x, weight, bias, scale, shift, mean, rstd, groups, eps, design="auto", body="auto"):
    nc = (x.shape[0], x.shape[1])
    mod = lambda t: x.new_empty(nc, dtype=weight.dtype if t is None else t.dtype)
    return torch.empty_like(x), torch.empty_like(weight), torch.empty_like(bias), mod(scale), mod(shift)


def _setup_context(ctx, inputs, output):
    x, weight, bias, scale, shift, groups, eps, design, body = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, weight, bias, scale, shift, mean, rstd)
    ctx.groups, ctx.eps, ctx.design, ctx.body = groups, eps, design, body
    ctx.has_scale, ctx.has_shift = scale is not None, shift is not None


def _backward(ctx, dy, _dmean, _drstd):
    x, weight, bias, scale, shift, mean, rstd = ctx.saved_tensors
    dx, dweight, dbias, dscale, dshift = group_norm_silu_bwd_op(
        dy, x, weight, bias, scale, shift, mean, rstd, ctx.groups, ctx.eps, ctx.design, ctx.body
    )
    dscale = dscale if ctx.has_scale else None
    dshift = dshift if ctx.has_shift else None
    return dx, dweight, dbias, dscale, dshift, None, None, None, None


group_norm_silu_fwd_op.register_autograd(_backward, setup_context=_setup_context)


class _GroupNormSiLUEager(torch.autograd.Function):
    """The op outside torch.compile: the same bodies as the custom op, called directly.

    A custom op's eager call and its registered backward pass through several Python layers of
    `torch.library` (default filling, alias checks, a dynamo guard), which cost more host time than
    the kernels at U-Net sizes. Compiled graphs keep the custom op, whose wrappers are traced away.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, scale, shift, groups, eps, design, body):
        y, mean, rstd = _fwd_body(x, weight, bias, scale, shift, groups, eps, design, body)
        ctx.save_for_backward(x, weight, bias, scale, shift, mean, rstd)
        ctx.groups, ctx.eps, ctx.design, ctx.body = groups, eps, design, body
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable  # like the custom op: no double backward
    def backward(ctx, dy):
        x, weight, bias, scale, shift, mean, rstd = ctx.saved_tensors
        dx, dweight, dbias, dscale, dshift = _bwd_body(
            dy, x, weight, bias, scale, shift, mean, rstd, ctx.groups, ctx.eps, ctx.design, ctx.body
        )
        dscale = dscale if scale is not None else None
        dshift = dshift if shift is not None else None
        return dx, dweight, dbias, dscale, dshift, None, None, None, None


def group_norm_silu(
    x: torch.Tensor,  # (N, C, *spatial), NCHW or channels-last; fp32, bf16 or fp16
    weight: torch.Tensor,  # (C,)
    bias: torch.Tensor,  # (C,)
    groups: int,
    eps: float = 1e-5,
    scale: torch.Tensor | None = None,  # (N, C) per-sample modulation, or None
    shift: torch.Tensor | None = None,  # (N, C), or None
    design: str = "auto",  # Triton design: auto, groups, rows, slab (design.choose_design)
    body: str = "auto",  # bodies.BODIES: auto, triton, triton-interpreter, native, math
) -> torch.Tensor:
    """silu(group_norm(x) * (1 + scale) + shift), fused; y has x's dtype and memory layout.

    Semantics of `group_norm_silu_reference`; differentiable in x, weight, bias, scale, shift.
    """
    n, c = x.shape[0], x.shape[1]
    if x.dim() < 3 or c % groups != 0:
        raise ValueError(f"x must be (N, C, *spatial) with C divisible by groups; got {tuple(x.shape)}, {groups}")
    if weight.shape != (c,) or bias.shape != (c,):
        raise ValueError(f"weight and bias must be ({c},); got {tuple(weight.shape)}, {tuple(bias.shape)}")
    for name, t in (("scale", scale), ("shift", shift)):
        if t is not None and t.shape != (n, c):
            raise ValueError(f"{name} must be ({n}, {c}); got {tuple(t.shape)}")
    if torch.compiler.is_compiling():
        return group_norm_silu_fwd_op(x, weight, bias, scale, shift, groups, float(eps), design, body)[0]
    return _GroupNormSiLUEager.apply(x, weight, bias, scale, shift, groups, float(eps), design, body)
