"""What the Triton designs of GroupNorm-SiLU share: the per-channel affine prologue and the
modulation arguments of a launch."""
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



def modulation(t: torch.Tensor | None, fallback: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(tensor, sample stride) for a kernel: channels must be unit-stride (a chunk() view is)."""
    if t is None:
        return fallback, 0
    t = t if t.stride(1) == 1 else t.contiguous()
    return t, t.stride(0)
