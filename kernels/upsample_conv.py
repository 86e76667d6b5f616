"""Nearest 2x upsampling followed by a 3x3 convolution (padding 1), computed without the upsampling.

    reference:  y = conv3x3(up2(x), W) + b             x (N, C, H, W) -> y (N, O, 2H, 2W)

Every output pixel (2i+a, 2j+b) of the reference sees only 2x2 distinct input pixels, because up2
repeats each row and column twice. Along one axis, output phase a of a 3-tap kernel (w0, w1, w2):

    a = 0:  rows (2i-1, 2i, 2i+1) of up2(x) = rows (i-1, i, i) of x  ->  taps (w0, w1 + w2) on (i-1, i)
    a = 1:  rows (2i, 2i+1, 2i+2) of up2(x) = rows (i, i, i+1) of x  ->  taps (w0 + w1, w2) on (i, i+1)

and likewise along columns (phase b). Zero padding of up2(x) is zero padding of x, so the border
pixels need nothing special. The sub-pixel form therefore computes

    K_ab  = R_a W R_b^T                        (O, C, 2, 2) for each phase (a, b), R_0 = [[1,0,0],[0,1,1]],
                                                R_1 = [[1,1,0],[0,0,1]]
    Z     = conv2x2(x, [K_00; K_01; K_10; K_11], padding 1) + [b; b; b; b]   (N, 4O, H+1, W+1), one call
    y[n, o, 2i+a, 2j+b] = Z[n, (2a+b) O + o, i+a, j+b]

with 4*4 = 16 multiply-adds per (output channel, input channel, input pixel) against the reference's
9*4 = 36: 2.25x fewer FLOPs in the forward, and the same saving in both halves of the backward,
which autograd derives through the conv and the weight sums. Only `_Interleave` (a copy of y's size,
its backward a copy back) is extra; the upsampled tensor of 4x the input size is never made.

Backward of the interleave:  dZ[n, (2a+b) O + o, i+a, j+b] = dy[n, o, 2i+a, 2j+b], and dZ = 0 at the
one row and one column of each phase block that no output reads (row H for a = 0, row 0 for a = 1;
columns likewise).

Results equal the reference up to fp32 rounding order (the weight sums and the shorter dot
products): tests/test_upsample_conv.py. Layout follows x: channels-last in, channels-last out.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

PHASES = ((0, 0), (0, 1), (1, 0), (1, 1))  # block order of Z's channels: block k = 2a + b


def upsample_conv_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """conv3x3(nearest 2x upsample of x), padding 1: the U-Net's Upsample as written."""
    return F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), weight, bias, padding=1)


def _taps(w: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The 3 taps along `dim` folded to 2 for phase 0 and phase 1 (see the module docstring)."""
    w0, w1, w2 = w.unbind(dim)
    return torch.stack((w0, w1 + w2), dim), torch.stack((w0 + w1, w2), dim)


def subpixel_weight(weight: torch.Tensor) -> torch.Tensor:
    """(O, C, 3, 3) -> (4O, C, 2, 2): the four phase kernels K_ab stacked in PHASES order (plain
    adds: under autocast they stay in the weight's dtype; the caller passes fp32)."""
    rows = _taps(weight, 2)  # phase a: (O, C, 2, 3)
    return torch.cat([_taps(rows[a], 3)[b] for a, b in PHASES], dim=0)


def _phase_view(z: torch.Tensor, o: int, h: int, w: int) -> torch.Tensor:
    """Z (N, 4O, H+1, W+1) as the 6-D view V[n, o, i, a, j, b] = Z[n, (2a+b) O + o, i+a, j+b].

    Moving a from 0 to 1 moves 2 channel blocks and 1 row; moving b, 1 block and 1 column, so V is
    a strided view of Z's own storage for any layout (no element of Z appears twice in V)."""
    sn, sc, sh, sw = z.stride()
    return z.as_strided((z.shape[0], o, h, 2, w, 2), (sn, sc, sh, sh + 2 * o * sc, sw, sw + o * sc))


class _Interleave(torch.autograd.Function):
    """Z (N, 4O, H+1, W+1) -> y (N, O, 2H, 2W), y[:, :, 2i+a, 2j+b] = V[:, :, i, a, j, b]: one copy each way."""

    @staticmethod
    def forward(ctx, z: torch.Tensor) -> torch.Tensor:
        n, c4, h1, w1 = z.shape
        o, h, w = c4 // 4, h1 - 1, w1 - 1
        ctx.fmt = _format_of(z)
        y = torch.empty((n, o, 2 * h, 2 * w), dtype=z.dtype, device=z.device, memory_format=ctx.fmt)
        y.view(n, o, h, 2, w, 2).copy_(_phase_view(z, o, h, w))
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor) -> torch.Tensor:
        n, o, h2, w2 = dy.shape
        h, w = h2 // 2, w2 // 2
        dz = torch.empty((n, 4 * o, h + 1, w + 1), dtype=dy.dtype, device=dy.device, memory_format=ctx.fmt)
        _phase_view(dz, o, h, w).copy_(dy.reshape(n, o, h, 2, w, 2))
        for k, (a, b) in enumerate(PHASES):  # the row and column of each block that no output reads
            dz[:, k * o:(k + 1) * o, h * (1 - a)].zero_()
            dz[:, k * o:(k + 1) * o, :, w * (1 - b)].zero_()
        return dz


def _is_channels_last(t: torch.Tensor) -> bool:
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def upsample_conv_subpixel(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Same result as `upsample_conv_reference` with 2.25x fewer convolution FLOPs (module docstring)."""
    if weight.shape[-2:] != (3, 3):
        raise ValueError(f"upsample_conv_subpixel: needs a 3x3 kernel, got {tuple(weight.shape)}")
    # tap sums in fp32 at least (fp64 stays fp64), then one rounding to the weight's dtype
    folded = subpixel_weight(weight.to(torch.promote_types(weight.dtype, torch.float32))).to(weight.dtype)
    z = F.conv2d(x, folded.to(memory_format=_format_of(x)),
                 None if bias is None else bias.repeat(4), padding=1)  # 2x2 kernel, pad 1: (H+1, W+1) out
    return _Interleave.apply(z)


def _format_of(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if _is_channels_last(x) else torch.contiguous_format
