"""Fused GroupNorm + affine + per-sample modulation + SiLU: Triton kernels, launchers, op.

x is viewed as (N, C, HW) with its own strides (NCHW and channels-last both flatten H, W without a
copy). Group g of sample n holds the CG = C/G channels g*CG .. g*CG+CG-1 over all HW pixels,
M = CG*HW elements. With s = scale[n, c] and t = shift[n, c] (0 when absent):

forward
    mean, rstd = statistics of the group (fp32; per-lane Welford over the tiles, lanes then
                 combined around the group mean, never E[x^2] - E[x]^2);  rstd = 1/sqrt(m2/M + eps)
    xhat = (x - mean) * rstd
    u    = xhat * w + b                       # GroupNorm affine
    h    = u * (1 + s) + t  = xhat * a + bb,  a = w*(1 + s),  bb = b*(1 + s) + t
    y    = h * sigmoid(h)

backward (recomputes xhat, h from x, mean, rstd; nothing else is saved)
    dh     = dy * sig * (1 + h * (1 - sig)),  sig = sigmoid(h)
    s1[n,c] = sum_hw dh,    s2[n,c] = sum_hw dh * xhat              (fp32, per channel)
    dshift = s1,   dscale = w*s2 + b*s1,   dbias = sum_n (1+s)*s1,   dweight = sum_n (1+s)*s2
    dxhat  = dh * a
    c1     = sum_{c in g} a*s1 / M  (= mean dxhat),   c2 = sum_{c in g} a*s2 / M  (= mean dxhat*xhat)
    dx     = rstd * (dxhat - c1 - xhat * c2)

Parallelism: one program per (n, g) group, looping over it twice (statistics, then output; the
second read mostly hits L2). When N*G programs cannot fill the device the group's pixels are split
over S programs ("split reduction"): a statistics kernel writes per-split (count, mean, m2) and
every split program combines them in the same fixed order; in the backward, per-split s1/s2 are
written and summed over splits in a fixed order. No atomics anywhere, so all gradients are
bitwise reproducible.
"""
import os

import torch

from . import bodies
from .bodies import tl, triton
from .launch import check_sample_size, forced_plan, split_plan
from .layout import as_n_c_p, write_back


def _tile_elems(args) -> int:
    # registers per program on a GPU; on the interpreter bigger tiles mean fewer Python steps
    return 8192 if args["X"].device.type == "cpu" else 4096


def _block_c(args) -> int:
    cg = triton.next_power_of_2(args["CG"])
    tile = _tile_elems(args)
    if args["stride_xc"] == 1:  # channels-last: channels are contiguous, take them all
        return min(cg, tile)
    return min(cg, max(1, tile // min(triton.next_power_of_2(args["HW_PER_SPLIT"]), tile)))


def _block_hw(args) -> int:
    return min(triton.next_power_of_2(args["HW_PER_SPLIT"]), max(1, _tile_elems(args) // args["BLOCK_C"]))


_HEURISTICS = {
    "BLOCK_C": _block_c,
    "BLOCK_HW": _block_hw,
    "num_warps": lambda args: 8 if args["BLOCK_C"] * args["BLOCK_HW"] >= 2048 else 4,
}


# ----------------------------------------------------------------------------- Triton kernels


@triton.jit
def _chunk_stats(
    X,  # pointer to x, shape (N, C, HW)
    x_base,  # offset of x[n, g*CG, 0]
    CG,  # channels per group
    hw_lo,  # first pixel of the chunk
    hw_hi,  # one past its last pixel
    stride_xc,
    stride_xp,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
):
    """(count, mean, m2) of x[group channels, hw_lo:hw_hi].

    Every lane of the (BLOCK_C, BLOCK_HW) tile keeps its own Welford (mean, m2, count) over the
    tiles it sees, so the loop carries no cross-lane reduction (which would serialise the loads);
    the lanes are combined once at the end with plain (tree) sums, which keeps the mean as accurate
    as a two-pass one.
    """
    mean_v = tl.zeros([BLOCK_C, BLOCK_HW], dtype=tl.float32)
    m2_v = tl.zeros([BLOCK_C, BLOCK_HW], dtype=tl.float32)
    n_v = tl.zeros([BLOCK_C, BLOCK_HW], dtype=tl.float32)
    for cb in range(0, CG, BLOCK_C):
        c = cb + tl.arange(0, BLOCK_C)
        for hb in range(hw_lo, hw_hi, BLOCK_HW):
            hw = hb + tl.arange(0, BLOCK_HW)
            mask = (c < CG)[:, None] & (hw < hw_hi)[None, :]
            offs = x_base + c[:, None] * stride_xc + hw[None, :] * stride_xp
            x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
            n_v += mask.to(tl.float32)
            delta = tl.where(mask, x - mean_v, 0.0)
            mean_v += delta / tl.maximum(n_v, 1.0)
            m2_v += tl.where(mask, delta * (x - mean_v), 0.0)
    # lanes combined exactly: mean = sum n_l mean_l / n,  m2 = sum m2_l + n_l (mean_l - mean)^2
    count = tl.sum(n_v)
    mean = tl.sum(n_v * mean_v) / tl.maximum(count, 1.0)
    d = mean_v - mean
    m2 = tl.sum(m2_v + n_v * d * d)
    return count, mean, m2


@triton.jit
def _channel_affine(
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
def _group_stats_from_partials(
    PART,  # pointer to partial (count, mean, m2), shape (3, N*G, S) fp32
    pid_ng,
    NG,  # N*G
    S,  # splits per group
):
    """Chan-combine the S partials of one group, always in split order (deterministic)."""
    count = 0.0
    mean = 0.0
    m2 = 0.0
    for s in range(0, S):
        n_t = tl.load(PART + pid_ng * S + s)
        mean_t = tl.load(PART + (NG + pid_ng) * S + s)
        m2_t = tl.load(PART + (2 * NG + pid_ng) * S + s)
        n_new = count + n_t
        delta = mean_t - mean
        mean = mean + delta * (n_t / n_new)
        m2 = m2 + m2_t + delta * delta * (count * n_t / n_new)
        count = n_new
    return count, mean, m2


@triton.heuristics(_HEURISTICS)
@triton.jit
def _gns_stats_kernel(
    X,  # pointer to x, shape (N, C, HW), strides (stride_xn, stride_xc, stride_xp)
    PART,  # out: partial (count, mean, m2), shape (3, N*G, S) fp32
    G,  # groups
    CG,  # channels per group
    HW,  # pixels per channel
    HW_PER_SPLIT,  # pixels per split program
    S,  # splits per group
    stride_xn,
    stride_xc,
    stride_xp,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
):
    """Split reduction, step 1: statistics of chunk (n, g, s). Grid (N*G, S)."""
    pid_ng = tl.program_id(0)
    pid_s = tl.program_id(1)
    n = pid_ng // G
    g = pid_ng % G
    x_base = n.to(tl.int64) * stride_xn + (g * CG).to(tl.int64) * stride_xc
    hw_lo = pid_s * HW_PER_SPLIT
    hw_hi = tl.minimum(hw_lo + HW_PER_SPLIT, HW)
    count, mean, m2 = _chunk_stats(X, x_base, CG, hw_lo, hw_hi, stride_xc, stride_xp, BLOCK_C, BLOCK_HW)
    NG = tl.num_programs(0)
    tl.store(PART + pid_ng * S + pid_s, count)
    tl.store(PART + (NG + pid_ng) * S + pid_s, mean)
    tl.store(PART + (2 * NG + pid_ng) * S + pid_s, m2)


@triton.heuristics(_HEURISTICS)
@triton.jit
def _gns_fwd_kernel(
    X,  # pointer to x, shape (N, C, HW), strides (stride_xn, stride_xc, stride_xp)
    Y,  # out: pointer to y, shape (N, C, HW), strides (stride_yn, stride_yc, stride_yp)
    W,  # pointer to weight, shape (C,)
    B,  # pointer to bias, shape (C,)
    SCALE,  # pointer to scale, shape (N, C), strides (stride_sn, 1); read only if HAS_SCALE
    SHIFT,  # pointer to shift, shape (N, C), strides (stride_tn, 1); read only if HAS_SHIFT
    MEAN,  # out: mean, shape (N*G,) fp32
    RSTD,  # out: rstd, shape (N*G,) fp32
    PART,  # partial statistics, shape (3, N*G, S) fp32; read only if SPLIT
    C,  # channels
    G,  # groups
    CG,  # channels per group
    HW,  # pixels per channel
    HW_PER_SPLIT,  # pixels per split program (HW when S == 1)
    S,  # splits per group
    eps,  # float, pinned to fp32 below
    stride_sn,
    stride_tn,
    stride_xn,
    stride_xc,
    stride_xp,
    stride_yn,
    stride_yc,
    stride_yp,
    HAS_SCALE: tl.constexpr,
    HAS_SHIFT: tl.constexpr,
    SPLIT: tl.constexpr,  # statistics from _gns_stats_kernel's partials instead of this program
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
):
    """y for chunk (n, g, s). Grid (N*G, S)."""
    pid_ng = tl.program_id(0)
    pid_s = tl.program_id(1)
    n = pid_ng // G
    g = pid_ng % G
    eps = tl.cast(eps, tl.float32)
    x_base = n.to(tl.int64) * stride_xn + (g * CG).to(tl.int64) * stride_xc
    y_base = n.to(tl.int64) * stride_yn + (g * CG).to(tl.int64) * stride_yc
    hw_lo = pid_s * HW_PER_SPLIT
    hw_hi = tl.minimum(hw_lo + HW_PER_SPLIT, HW)
    if SPLIT:
        count, mean, m2 = _group_stats_from_partials(PART, pid_ng, tl.num_programs(0), S)
    else:
        count, mean, m2 = _chunk_stats(X, x_base, CG, 0, HW, stride_xc, stride_xp, BLOCK_C, BLOCK_HW)
    rstd = tl.rsqrt(m2 / count + eps)
    if pid_s == 0:
        tl.store(MEAN + pid_ng, mean)
        tl.store(RSTD + pid_ng, rstd)

    for cb in range(0, CG, BLOCK_C):
        c = cb + tl.arange(0, BLOCK_C)
        cmask = c < CG
        a, bb = _channel_affine(W, B, SCALE, SHIFT, n, g * CG + c, cmask, stride_sn, stride_tn, HAS_SCALE, HAS_SHIFT)
        for hb in range(hw_lo, hw_hi, BLOCK_HW):
            hw = hb + tl.arange(0, BLOCK_HW)
            mask = cmask[:, None] & (hw < hw_hi)[None, :]
            x = tl.load(X + x_base + c[:, None] * stride_xc + hw[None, :] * stride_xp, mask=mask, other=0.0)
            xhat = (x.to(tl.float32) - mean) * rstd
            h = xhat * a[:, None] + bb[:, None]
            y = h * tl.sigmoid(h)
            y_offs = y_base + c[:, None] * stride_yc + hw[None, :] * stride_yp
            tl.store(Y + y_offs, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _dh_tile(
    X,  # pointer to x, shape (N, C, HW)
    DY,  # pointer to dy, shape (N, C, HW)
    x_offs,  # tile offsets into x, shape (BLOCK_C, BLOCK_HW)
    dy_offs,  # tile offsets into dy, shape (BLOCK_C, BLOCK_HW)
    mask,  # shape (BLOCK_C, BLOCK_HW)
    mean,
    rstd,
    a,  # shape (BLOCK_C,)
    bb,  # shape (BLOCK_C,)
):
    """Recompute xhat and h for a tile, return (xhat, dh), both 0 outside the mask."""
    x = tl.load(X + x_offs, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(DY + dy_offs, mask=mask, other=0.0).to(tl.float32)
    xhat = tl.where(mask, (x - mean) * rstd, 0.0)
    h = xhat * a[:, None] + bb[:, None]
    sig = tl.sigmoid(h)
    dh = dy * sig * (1.0 + h * (1.0 - sig))
    return xhat, dh


@triton.heuristics(_HEURISTICS)
@triton.jit
def _gns_bwd_reduce_kernel(
    X,  # pointer to x, shape (N, C, HW), strides (stride_xn, stride_xc, stride_xp)
    DY,  # pointer to dy, shape (N, C, HW), strides (stride_dn, stride_dc, stride_dp)
    W,  # pointer to weight, shape (C,)
    B,  # pointer to bias, shape (C,)
    SCALE,  # pointer to scale, shape (N, C), strides (stride_sn, 1); read only if HAS_SCALE
    SHIFT,  # pointer to shift, shape (N, C), strides (stride_tn, 1); read only if HAS_SHIFT
    MEAN,  # pointer to mean, shape (N*G,) fp32
    RSTD,  # pointer to rstd, shape (N*G,) fp32
    PART,  # out: per-split channel sums (s1, s2), shape (2, S, N, C) fp32
    N,  # samples
    C,  # channels
    G,  # groups
    CG,  # channels per group
    HW,  # pixels per channel
    HW_PER_SPLIT,  # pixels per split program
    stride_sn,
    stride_tn,
    stride_xn,
    stride_xc,
    stride_xp,
    stride_dn,
    stride_dc,
    stride_dp,
    HAS_SCALE: tl.constexpr,
    HAS_SHIFT: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
):
    """Split reduction of the backward: s1, s2 over chunk (n, g, s). Grid (N*G, S)."""
    pid_ng = tl.program_id(0)
    pid_s = tl.program_id(1)
    n = pid_ng // G
    g = pid_ng % G
    x_base = n.to(tl.int64) * stride_xn + (g * CG).to(tl.int64) * stride_xc
    dy_base = n.to(tl.int64) * stride_dn + (g * CG).to(tl.int64) * stride_dc
    hw_lo = pid_s * HW_PER_SPLIT
    hw_hi = tl.minimum(hw_lo + HW_PER_SPLIT, HW)
    mean = tl.load(MEAN + pid_ng)
    rstd = tl.load(RSTD + pid_ng)
    NC = N * C
    for cb in range(0, CG, BLOCK_C):
        c = cb + tl.arange(0, BLOCK_C)
        cmask = c < CG
        a, bb = _channel_affine(W, B, SCALE, SHIFT, n, g * CG + c, cmask, stride_sn, stride_tn, HAS_SCALE, HAS_SHIFT)
        acc1 = tl.zeros([BLOCK_C, BLOCK_HW], dtype=tl.float32)  # lane sums: one reduction after the loop
        acc2 = tl.zeros([BLOCK_C, BLOCK_HW], dtype=tl.float32)
        for hb in range(hw_lo, hw_hi, BLOCK_HW):
            hw = hb + tl.arange(0, BLOCK_HW)
            mask = cmask[:, None] & (hw < hw_hi)[None, :]
            x_offs = x_base + c[:, None] * stride_xc + hw[None, :] * stride_xp
            dy_offs = dy_base + c[:, None] * stride_dc + hw[None, :] * stride_dp
            xhat, dh = _dh_tile(X, DY, x_offs, dy_offs, mask, mean, rstd, a, bb)
            acc1 += dh
            acc2 += dh * xhat
        s1 = tl.sum(acc1, axis=1)
        s2 = tl.sum(acc2, axis=1)
        nc = n * C + g * CG + c
        tl.store(PART + pid_s * NC + nc, s1, mask=cmask)
        tl.store(PART + (tl.num_programs(1) + pid_s) * NC + nc, s2, mask=cmask)


@triton.heuristics(_HEURISTICS)
@triton.jit
def _gns_bwd_kernel(
    X,  # pointer to x, shape (N, C, HW), strides (stride_xn, stride_xc, stride_xp)
    DY,  # pointer to dy, shape (N, C, HW), strides (stride_dn, stride_dc, stride_dp)
    DX,  # out: pointer to dx, shape (N, C, HW), strides (stride_gn, stride_gc, stride_gp)
    W,  # pointer to weight, shape (C,)
    B,  # pointer to bias, shape (C,)
    SCALE,  # pointer to scale, shape (N, C), strides (stride_sn, 1); read only if HAS_SCALE
    SHIFT,  # pointer to shift, shape (N, C), strides (stride_tn, 1); read only if HAS_SHIFT
    MEAN,  # pointer to mean, shape (N*G,) fp32
    RSTD,  # pointer to rstd, shape (N*G,) fp32
    SUMS,  # channel sums (s1, s2), shape (2, N, C) fp32: written here unless SPLIT, else read
    N,  # samples
    C,  # channels
    G,  # groups
    CG,  # channels per group
    HW,  # pixels per channel
    HW_PER_SPLIT,  # pixels per split program (HW when not SPLIT)
    stride_sn,
    stride_tn,
    stride_xn,
    stride_xc,
    stride_xp,
    stride_dn,
    stride_dc,
    stride_dp,
    stride_gn,
    stride_gc,
    stride_gp,
    HAS_SCALE: tl.constexpr,
    HAS_SHIFT: tl.constexpr,
    SPLIT: tl.constexpr,  # s1, s2 already reduced by _gns_bwd_reduce_kernel + a fixed-order sum
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
):
    """dx for chunk (n, g, s), and s1, s2 when one program owns the group. Grid (N*G, S)."""
    pid_ng = tl.program_id(0)
    pid_s = tl.program_id(1)
    n = pid_ng // G
    g = pid_ng % G
    x_base = n.to(tl.int64) * stride_xn + (g * CG).to(tl.int64) * stride_xc
    dy_base = n.to(tl.int64) * stride_dn + (g * CG).to(tl.int64) * stride_dc
    dx_base = n.to(tl.int64) * stride_gn + (g * CG).to(tl.int64) * stride_gc
    hw_lo = pid_s * HW_PER_SPLIT
    hw_hi = tl.minimum(hw_lo + HW_PER_SPLIT, HW)
    mean = tl.load(MEAN + pid_ng)
    rstd = tl.load(RSTD + pid_ng)
    NC = N * C

    # c1 * M = sum_c a*s1,  c2 * M = sum_c a*s2  over the group's channels
    c1 = 0.0
    c2 = 0.0
    for cb in range(0, CG, BLOCK_C):
        c = cb + tl.arange(0, BLOCK_C)
        cmask = c < CG
        nc = n * C + g * CG + c
        a, bb = _channel_affine(W, B, SCALE, SHIFT, n, g * CG + c, cmask, stride_sn, stride_tn, HAS_SCALE, HAS_SHIFT)
        if SPLIT:
            s1 = tl.load(SUMS + nc, mask=cmask, other=0.0)
            s2 = tl.load(SUMS + NC + nc, mask=cmask, other=0.0)
        else:
            acc1 = tl.zeros([BLOCK_C, BLOCK_HW], dtype=tl.float32)
            acc2 = tl.zeros([BLOCK_C, BLOCK_HW], dtype=tl.float32)
            for hb in range(0, HW, BLOCK_HW):
                hw = hb + tl.arange(0, BLOCK_HW)
                mask = cmask[:, None] & (hw < HW)[None, :]
                x_offs = x_base + c[:, None] * stride_xc + hw[None, :] * stride_xp
                dy_offs = dy_base + c[:, None] * stride_dc + hw[None, :] * stride_dp
                xhat, dh = _dh_tile(X, DY, x_offs, dy_offs, mask, mean, rstd, a, bb)
                acc1 += dh
                acc2 += dh * xhat
            s1 = tl.sum(acc1, axis=1)
            s2 = tl.sum(acc2, axis=1)
            tl.store(SUMS + nc, s1, mask=cmask)
            tl.store(SUMS + NC + nc, s2, mask=cmask)
        c1 += tl.sum(a * s1)
        c2 += tl.sum(a * s2)
    inv_m = 1.0 / (CG * HW * 1.0)  # a float even when CG = HW = 1 (constexprs)
    c1 = c1 * inv_m
    c2 = c2 * inv_m

    # dx = rstd * (dh*a - c1 - xhat*c2)
    for cb in range(0, CG, BLOCK_C):
        c = cb + tl.arange(0, BLOCK_C)
        cmask = c < CG
        a, bb = _channel_affine(W, B, SCALE, SHIFT, n, g * CG + c, cmask, stride_sn, stride_tn, HAS_SCALE, HAS_SHIFT)
        for hb in range(hw_lo, hw_hi, BLOCK_HW):
            hw = hb + tl.arange(0, BLOCK_HW)
            mask = cmask[:, None] & (hw < hw_hi)[None, :]
            x_offs = x_base + c[:, None] * stride_xc + hw[None, :] * stride_xp
            dy_offs = dy_base + c[:, None] * stride_dc + hw[None, :] * stride_dp
            xhat, dh = _dh_tile(X, DY, x_offs, dy_offs, mask, mean, rstd, a, bb)
            dx = rstd * (dh * a[:, None] - c1 - xhat * c2)
            dx_offs = dx_base + c[:, None] * stride_gc + hw[None, :] * stride_gp
            tl.store(DX + dx_offs, dx.to(DX.dtype.element_ty), mask=mask)


@triton.heuristics({"BLOCK_C": lambda args: min(64, triton.next_power_of_2(args["C"])), "num_warps": lambda args: 2})
@triton.jit
def _gns_param_grads_kernel(
    PART,  # channel sums (s1, s2) per split, shape (2, S, N, C) fp32
    SUMS,  # out if SPLIT: (s1, s2) summed over splits, shape (2, N, C) fp32, for _gns_bwd_kernel
    W,  # pointer to weight, shape (C,)
    B,  # pointer to bias, shape (C,)
    SCALE,  # pointer to scale, shape (N, C), strides (stride_sn, 1); read only if HAS_SCALE
    DW,  # out: dweight, shape (C,)
    DB,  # out: dbias, shape (C,)
    DSCALE,  # out: dscale, shape (N, C) contiguous
    DSHIFT,  # out: dshift, shape (N, C) contiguous
    N,  # samples
    C,  # channels
    S,  # splits per group (1 when PART is SUMS)
    stride_sn,
    HAS_SCALE: tl.constexpr,
    SPLIT: tl.constexpr,  # S > 1: write the split-summed s1, s2 to SUMS
    BLOCK_C: tl.constexpr,
):
    """dweight, dbias, dscale, dshift from s1, s2; splits then samples summed in a fixed order.

    Grid (cdiv(C, BLOCK_C),): one program per block of channels, no atomics.
    """
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    w = tl.load(W + c, mask=cmask, other=0.0).to(tl.float32)
    b = tl.load(B + c, mask=cmask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_C], dtype=tl.float32)
    db = tl.zeros([BLOCK_C], dtype=tl.float32)
    NC = N * C
    for n in range(0, N):
        s1 = tl.zeros([BLOCK_C], dtype=tl.float32)
        s2 = tl.zeros([BLOCK_C], dtype=tl.float32)
        for s in range(0, S):
            s1 += tl.load(PART + s * NC + n * C + c, mask=cmask, other=0.0)
            s2 += tl.load(PART + (S + s) * NC + n * C + c, mask=cmask, other=0.0)
        if SPLIT:
            tl.store(SUMS + n * C + c, s1, mask=cmask)
            tl.store(SUMS + NC + n * C + c, s2, mask=cmask)
        tl.store(DSHIFT + n * C + c, s1.to(DSHIFT.dtype.element_ty), mask=cmask)
        tl.store(DSCALE + n * C + c, (w * s2 + b * s1).to(DSCALE.dtype.element_ty), mask=cmask)
        if HAS_SCALE:
            one_plus_s = 1.0 + tl.load(SCALE + n * stride_sn + c, mask=cmask, other=0.0).to(tl.float32)
            s1 = s1 * one_plus_s
            s2 = s2 * one_plus_s
        dw += s2
        db += s1
    tl.store(DW + c, dw.to(DW.dtype.element_ty), mask=cmask)
    tl.store(DB + c, db.to(DB.dtype.element_ty), mask=cmask)


# ----------------------------------------------------------------------------- launchers

# Channels-last inputs on the GPU: "groups", the kernels above (one program per group, CG of every
# C values read per pixel), or "rows", group_norm_silu_rows.py (programs own whole pixel rows).
# "rows" is the design meant for channels-last but has not been timed on a GPU yet, so "groups",
# which has, stays the default; `benchmarks/bench_group_norm_silu.py --providers fused rows`
# compares them. HYBENGINE_GN_CHANNELS_LAST=rows makes it the process default; a run's config key
# kernels.group_norm_silu_channels_last (auto: that default) sets it through hybengine.ops.configure.
# "slab", group_norm_silu_slab.py (one persistent launch per pass, each input read once from DRAM),
# applies to both layouts; it is not yet timed on a GPU either (HYBENGINE_GN_CHANNELS_LAST=slab).
# `_design` below is the one place that turns this choice and an input into a design.
CHANNELS_LAST_KERNELS = ("groups", "rows", "slab")
DEFAULT_CHANNELS_LAST_KERNEL = os.environ.get("HYBENGINE_GN_CHANNELS_LAST", "groups")
if DEFAULT_CHANNELS_LAST_KERNEL not in CHANNELS_LAST_KERNELS:
    raise ValueError(f"HYBENGINE_GN_CHANNELS_LAST={DEFAULT_CHANNELS_LAST_KERNEL!r}: "
                     f"expected one of {CHANNELS_LAST_KERNELS}")
_channels_last_kernel = DEFAULT_CHANNELS_LAST_KERNEL


def set_channels_last_kernel(name: str) -> str:
    """Choose the Triton kernels ("groups", "rows": channels-last only, "slab": both layouts); returns the
    previous choice."""
    global _channels_last_kernel
    if name not in CHANNELS_LAST_KERNELS:
        raise ValueError(f"unknown channels-last kernel {name!r}; expected one of {CHANNELS_LAST_KERNELS}")
    previous, _channels_last_kernel = _channels_last_kernel, name
    return previous


def channels_last_kernel() -> str:
    return _channels_last_kernel


def _design(x: torch.Tensor, hw_per_split: int | None) -> str:
    """"groups", "rows" or "slab" for this input (a forced split size means the group kernels)."""
    if hw_per_split is not None or _channels_last_kernel == "groups":
        return "groups"
    if _channels_last_kernel == "slab":
        return "slab"
    from .group_norm_silu_rows import rows_supported

    return "rows" if rows_supported(x) else "groups"


def _plan(x3: torch.Tensor, groups: int, hw_per_split: int | None) -> tuple[int, int]:
    n, c, hw = x3.shape
    if hw_per_split is not None:
        return forced_plan(hw, hw_per_split)
    return split_plan(n * groups, hw, c // groups, x3.device)


def _modulation(t: torch.Tensor | None, fallback: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(tensor, sample stride) for a kernel: channels must be unit-stride (a chunk() view is)."""
    if t is None:
        return fallback, 0
    t = t if t.stride(1) == 1 else t.contiguous()
    return t, t.stride(0)


def group_norm_silu_fwd_triton(
    x: torch.Tensor,  # (N, C, *spatial), NCHW or channels-last
    weight: torch.Tensor,  # (C,)
    bias: torch.Tensor,  # (C,)
    scale: torch.Tensor | None,  # (N, C)
    shift: torch.Tensor | None,  # (N, C)
    groups: int,
    eps: float,
    hw_per_split: int | None = None,  # force the split size (tests); None: `launch.split_plan`
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns y (x's dtype and layout), mean and rstd ((N, G) fp32)."""
    check_sample_size(x, "x", "group_norm_silu")
    design = _design(x, hw_per_split)
    if design == "rows":
        from .group_norm_silu_rows import group_norm_silu_fwd_rows

        return group_norm_silu_fwd_rows(x, weight, bias, scale, shift, groups, eps)
    if design == "slab":
        from .group_norm_silu_slab import group_norm_silu_fwd_slab

        return group_norm_silu_fwd_slab(x, weight, bias, scale, shift, groups, eps)
    weight, bias = weight.contiguous(), bias.contiguous()  # no-ops for parameters
    y = torch.empty_like(x)
    x3, y3 = as_n_c_p(x), as_n_c_p(y)
    n, c, hw = x3.shape
    cg = c // groups
    s, chunk = _plan(x3, groups, hw_per_split)
    (scale_t, stride_sn), (shift_t, stride_tn) = _modulation(scale, weight), _modulation(shift, weight)
    mean = torch.empty((n, groups), device=x.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    part = torch.empty((3, n * groups, s), device=x.device, dtype=torch.float32)
    if s > 1:
        _gns_stats_kernel[(n * groups, s)](x3, part, groups, cg, hw, chunk, s, *x3.stride())
    _gns_fwd_kernel[(n * groups, s)](
        x3, y3, weight, bias, scale_t, shift_t, mean, rstd, part,
        c, groups, cg, hw, chunk, s, float(eps), stride_sn, stride_tn, *x3.stride(), *y3.stride(),
        HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None, SPLIT=s > 1,
    )  # fmt: skip
    return write_back(y, y3), mean, rstd


def group_norm_silu_bwd_triton(
    dy: torch.Tensor,  # (N, C, *spatial), any layout
    x: torch.Tensor,  # (N, C, *spatial)
    weight: torch.Tensor,
    bias: torch.Tensor,
    scale: torch.Tensor | None,
    shift: torch.Tensor | None,
    mean: torch.Tensor,  # (N, G) fp32
    rstd: torch.Tensor,  # (N, G) fp32
    groups: int,
    eps: float,
    hw_per_split: int | None = None,
) -> tuple[torch.Tensor, ...]:
    """Returns dx (x's dtype and layout), dweight, dbias, dscale, dshift (see `_param_grads`).

    Whole groups: dx kernel (writes s1, s2) -> parameter kernel. Split groups: s1/s2 partials ->
    parameter kernel (also sums the partials) -> dx kernel.
    """
    check_sample_size(x, "x", "group_norm_silu")
    design = _design(x, hw_per_split)
    if design == "rows":
        from .group_norm_silu_rows import group_norm_silu_bwd_rows

        return group_norm_silu_bwd_rows(dy, x, weight, bias, scale, shift, mean, rstd, groups, eps)
    if design == "slab":
        from .group_norm_silu_slab import group_norm_silu_bwd_slab

        return group_norm_silu_bwd_slab(dy, x, weight, bias, scale, shift, mean, rstd, groups, eps)
    weight, bias = weight.contiguous(), bias.contiguous()
    dx = torch.empty_like(x)
    x3, dy3, dx3 = as_n_c_p(x), as_n_c_p(dy), as_n_c_p(dx)
    n, c, hw = x3.shape
    cg = c // groups
    s, chunk = _plan(x3, groups, hw_per_split)
    (scale_t, stride_sn), (shift_t, stride_tn) = _modulation(scale, weight), _modulation(shift, weight)
    flags = dict(HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None)
    mean, rstd = mean.contiguous(), rstd.contiguous()
    sums = torch.empty((2, n, c), device=x.device, dtype=torch.float32)
    part = torch.empty((2, s, n, c), device=x.device, dtype=torch.float32) if s > 1 else sums
    mod_dtype = lambda t: weight.dtype if t is None else t.dtype
    dweight, dbias = torch.empty_like(weight), torch.empty_like(bias)
    dscale = torch.empty((n, c), device=x.device, dtype=mod_dtype(scale))
    dshift = torch.empty((n, c), device=x.device, dtype=mod_dtype(shift))

    def param_grads():
        grid = lambda meta: (triton.cdiv(c, meta["BLOCK_C"]),)
        _gns_param_grads_kernel[grid](
            part, sums, weight, bias, scale_t, dweight, dbias, dscale, dshift, n, c, s, stride_sn,
            HAS_SCALE=scale is not None, SPLIT=s > 1,
        )  # fmt: skip

    if s > 1:
        _gns_bwd_reduce_kernel[(n * groups, s)](
            x3, dy3, weight, bias, scale_t, shift_t, mean, rstd, part, n, c, groups, cg, hw, chunk,
            stride_sn, stride_tn, *x3.stride(), *dy3.stride(), **flags,
        )  # fmt: skip
        param_grads()
    _gns_bwd_kernel[(n * groups, s)](
        x3, dy3, dx3, weight, bias, scale_t, shift_t, mean, rstd, sums, n, c, groups, cg, hw, chunk,
        stride_sn, stride_tn, *x3.stride(), *dy3.stride(), *dx3.stride(), SPLIT=s > 1, **flags,
    )  # fmt: skip
    if s == 1:
        param_grads()
    return write_back(dx, dx3), dweight, dbias, dscale, dshift


def _param_grads(  # the math path's version of _gns_param_grads_kernel
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


# ----------------------------------------------------------------------------- math path (plain torch)


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


bodies.register_impl("group_norm_silu", "triton", group_norm_silu_fwd_triton, group_norm_silu_bwd_triton)
bodies.register_impl("group_norm_silu", "math", group_norm_silu_fwd_math, group_norm_silu_bwd_math)


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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, mean, rstd); the implementation is picked by `bodies.implementation`."""
    return bodies.implementation("group_norm_silu", x).fwd(x, weight, bias, scale, shift, groups, eps)


@group_norm_silu_fwd_op.register_fake
def _(x, weight, bias, scale, shift, groups, eps):
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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dweight, dbias, dscale, dshift); dscale/dshift are (N, C) even when scale/shift are None."""
    impl = bodies.implementation("group_norm_silu", x)
    return impl.bwd(dy, x, weight, bias, scale, shift, mean, rstd, groups, eps)


@group_norm_silu_bwd_op.register_fake
def _(dy, x, weight, bias, scale, shift, mean, rstd, groups, eps):
    nc = (x.shape[0], x.shape[1])
    mod = lambda t: x.new_empty(nc, dtype=weight.dtype if t is None else t.dtype)
    return torch.empty_like(x), torch.empty_like(weight), torch.empty_like(bias), mod(scale), mod(shift)


def _setup_context(ctx, inputs, output):
    x, weight, bias, scale, shift, groups, eps = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, weight, bias, scale, shift, mean, rstd)
    ctx.groups, ctx.eps = groups, eps
    ctx.has_scale, ctx.has_shift = scale is not None, shift is not None


def _backward(ctx, dy, _dmean, _drstd):
    x, weight, bias, scale, shift, mean, rstd = ctx.saved_tensors
    dx, dweight, dbias, dscale, dshift = group_norm_silu_bwd_op(
        dy, x, weight, bias, scale, shift, mean, rstd, ctx.groups, ctx.eps
    )
    dscale = dscale if ctx.has_scale else None
    dshift = dshift if ctx.has_shift else None
    return dx, dweight, dbias, dscale, dshift, None, None


group_norm_silu_fwd_op.register_autograd(_backward, setup_context=_setup_context)


class _GroupNormSiLUEager(torch.autograd.Function):
    """The op outside torch.compile: the same bodies as the custom op, called directly.

    A custom op's eager call and its registered backward pass through several Python layers of
    `torch.library` (default filling, alias checks, a dynamo guard), which cost more host time than
    the kernels at U-Net sizes. Compiled graphs keep the custom op, whose wrappers are traced away.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, scale, shift, groups, eps):
        impl = bodies.implementation("group_norm_silu", x)
        y, mean, rstd = impl.fwd(x, weight, bias, scale, shift, groups, eps)
        ctx.save_for_backward(x, weight, bias, scale, shift, mean, rstd)
        ctx.impl, ctx.groups, ctx.eps = impl, groups, eps
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable  # like the custom op: no double backward
    def backward(ctx, dy):
        x, weight, bias, scale, shift, mean, rstd = ctx.saved_tensors
        dx, dweight, dbias, dscale, dshift = ctx.impl.bwd(
            dy, x, weight, bias, scale, shift, mean, rstd, ctx.groups, ctx.eps
        )
        dscale = dscale if scale is not None else None
        dshift = dshift if shift is not None else None
        return dx, dweight, dbias, dscale, dshift, None, None


def group_norm_silu(
    x: torch.Tensor,  # (N, C, *spatial), NCHW or channels-last; fp32, bf16 or fp16
    weight: torch.Tensor,  # (C,)
    bias: torch.Tensor,  # (C,)
    groups: int,
    eps: float = 1e-5,
    scale: torch.Tensor | None = None,  # (N, C) per-sample modulation, or None
    shift: torch.Tensor | None = None,  # (N, C), or None
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
        return group_norm_silu_fwd_op(x, weight, bias, scale, shift, groups, float(eps))[0]
    return _GroupNormSiLUEager.apply(x, weight, bias, scale, shift, groups, float(eps))
