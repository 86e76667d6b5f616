"""The per-element math every Triton design of GroupNorm-SiLU shares (formulas in the package
docstring), and the modulation arguments of a launch: a change to the math of the Triton body
touches this file, whatever the design.

The tile helpers take per-channel values already shaped to broadcast against the tile: the group
kernels (groups.py) lay a tile out as [BLOCK_C, BLOCK_HW] and pass `a[:, None]`, the rows and slab
kernels as [BLOCK_P, BLOCK_C] and pass `a[None, :]`; a group's mean and rstd may be scalars.
"""
import torch

from ..bodies import tl, triton


@triton.jit
def channel_affine(
    W,  # pointer to weight, shape (C,)
    B,  # pointer to bias, shape (C,)
    SCALE,  # pointer to scale, shape (N, C), strides (stride_sn, 1)
    SHIFT,  # pointer to shift, shape (N, C), strides (stride_tn, 1)
    n,  # sample index
    c_abs,  # absolute channel indices, shape (BLOCK_C,)
    cmask,  # valid channels, shape (BLOCK_C,)
    stride_sn,
    stride_tn,
    HAS_SCALE: tl.constexpr,
    HAS_SHIFT: tl.constexpr,
):
    """a = w*(1+s), bb = b*(1+s)+t for a block of channels (fp32)."""
    w = tl.load(W + c_abs, mask=cmask, other=0.0).to(tl.float32)
    b = tl.load(B + c_abs, mask=cmask, other=0.0).to(tl.float32)
    a = w
    bb = b
    if HAS_SCALE:
        s1 = 1.0 + tl.load(SCALE + n * stride_sn + c_abs, mask=cmask, other=0.0).to(tl.float32)
        a = w * s1
        bb = b * s1
    if HAS_SHIFT:
        bb = bb + tl.load(SHIFT + n * stride_tn + c_abs, mask=cmask, other=0.0).to(tl.float32)
    return a, bb


@triton.jit
def silu(h):
    """y = h * sigmoid(h): the forward's output from the modulated value h = xhat*a + bb."""
    return h * tl.sigmoid(h)


@triton.jit
def dh_tile(X, DY, x_offs, dy_offs, mask, mean, rstd, a, bb):
    """Reread x and dy of a tile and return (xhat, dh), both 0 outside the mask:
    dh = dy * sig * (1 + h * (1 - sig)), h = xhat*a + bb, sig = sigmoid(h) (fp32)."""
    x = tl.load(X + x_offs, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(DY + dy_offs, mask=mask, other=0.0).to(tl.float32)
    xhat = tl.where(mask, (x - mean) * rstd, 0.0)
    h = xhat * a + bb
    sig = tl.sigmoid(h)
    return xhat, dy * sig * (1.0 + h * (1.0 - sig))


@triton.jit
def dx_tile(dh, xhat, a, rstd, c1, c2):
    """dx = rstd * (dh*a - c1 - xhat*c2), c1 and c2 the group's coefficients."""
    return rstd * (dh * a - c1 - xhat * c2)


def modulation(t: torch.Tensor | None, fallback: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(tensor, sample stride) for a kernel: channels must be unit-stride (a chunk() view is)."""
    if t is None:
        return fallback, 0
    t = t if t.stride(1) == 1 else t.contiguous()
    return t, t.stride(0)
