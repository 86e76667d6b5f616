"""Benchmark-only provider `groups-pre8a0dcf0`: the group kernels as they were before commit 8a0dcf0.

Commit 8a0dcf0 changed two things in the group kernels of GroupNorm-SiLU (now
kernels/group_norm_silu/groups.py): the statistics became a per-lane Welford (one fp32 divide per
element, lanes combined at the end) instead of a two-pass (mean, m2) per tile Chan-combined over
tiles, and the backward's s1, s2 became per-lane sums reduced once after the loop instead of a
reduction per tile. Between the H100 engine rows at 362.7 and 278.7 img/s it is the one kernel
change, so issue 16 asks for both kernels timed side by side. This file recreates the kernels
before it from git history (`git show 8a0dcf0^:kernels/group_norm_silu.py`), with the `inv_m`
constexpr fix. Everything the commit did not touch comes from the package's public names: the
heuristics and register budgets of the group kernels (`groups.heuristics`: the same `maxnreg` per
kernel and tiling, so the A/B measures the commit's kernel change alone), the tile math
(`tiles`), the combination of split partials, the launch plan, the parameter-gradient kernel and
the launchers (`GroupKernels`). Not part of the package (benchmarks/probes/).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: repo_imports
import repo_imports  # noqa: E402, F401  (before hybengine: works without an install)
import torch  # noqa: E402

from hybengine.kernels.bodies import tl, triton  # noqa: E402
from hybengine.kernels.group_norm_silu.groups import (  # noqa: E402
    GroupKernels,
    group_norm_silu_bwd_groups,
    group_norm_silu_fwd_groups,
    group_stats_from_partials,
    heuristics,
)
from hybengine.kernels.group_norm_silu.tiles import channel_affine, dh_tile, dx_tile, silu  # noqa: E402


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
    """(count, mean, m2) of x[group channels, hw_lo:hw_hi]: two-pass per tile, Chan-combined."""
    count = 0.0
    mean = 0.0
    m2 = 0.0
    for cb in range(0, CG, BLOCK_C):
        c = cb + tl.arange(0, BLOCK_C)
        n_c = tl.minimum(CG - cb, BLOCK_C)
        for hb in range(hw_lo, hw_hi, BLOCK_HW):
            hw = hb + tl.arange(0, BLOCK_HW)
            mask = (c < CG)[:, None] & (hw < hw_hi)[None, :]
            offs = x_base + c[:, None] * stride_xc + hw[None, :] * stride_xp
            x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
            n_t = (n_c * tl.minimum(hw_hi - hb, BLOCK_HW)).to(tl.float32)
            mean_t = tl.sum(x) / n_t
            d = tl.where(mask, x - mean_t, 0.0)
            m2_t = tl.sum(d * d)
            n_new = count + n_t
            delta = mean_t - mean
            mean = mean + delta * (n_t / n_new)
            m2 = m2 + m2_t + delta * delta * (count * n_t / n_new)
            count = n_new
    return count, mean, m2


@triton.heuristics(heuristics("_gns_stats_kernel"))
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


@triton.heuristics(heuristics("_gns_fwd_kernel"))
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
        count, mean, m2 = group_stats_from_partials(PART, pid_ng, tl.num_programs(0), S)
    else:
        count, mean, m2 = _chunk_stats(X, x_base, CG, 0, HW, stride_xc, stride_xp, BLOCK_C, BLOCK_HW)
    rstd = tl.rsqrt(m2 / count + eps)
    if pid_s == 0:
        tl.store(MEAN + pid_ng, mean)
        tl.store(RSTD + pid_ng, rstd)

    for cb in range(0, CG, BLOCK_C):
        c = cb + tl.arange(0, BLOCK_C)
        cmask = c < CG
        a, bb = channel_affine(W, B, SCALE, SHIFT, n, g * CG + c, cmask, stride_sn, stride_tn, HAS_SCALE, HAS_SHIFT)
        for hb in range(hw_lo, hw_hi, BLOCK_HW):
            hw = hb + tl.arange(0, BLOCK_HW)
            mask = cmask[:, None] & (hw < hw_hi)[None, :]
            x = tl.load(X + x_base + c[:, None] * stride_xc + hw[None, :] * stride_xp, mask=mask, other=0.0)
            xhat = (x.to(tl.float32) - mean) * rstd
            h = xhat * a[:, None] + bb[:, None]
            y = silu(h)
            y_offs = y_base + c[:, None] * stride_yc + hw[None, :] * stride_yp
            tl.store(Y + y_offs, y.to(Y.dtype.element_ty), mask=mask)


@triton.heuristics(heuristics("_gns_bwd_reduce_kernel"))
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
        a, bb = channel_affine(W, B, SCALE, SHIFT, n, g * CG + c, cmask, stride_sn, stride_tn, HAS_SCALE, HAS_SHIFT)
        s1 = tl.zeros([BLOCK_C], dtype=tl.float32)
        s2 = tl.zeros([BLOCK_C], dtype=tl.float32)
        for hb in range(hw_lo, hw_hi, BLOCK_HW):
            hw = hb + tl.arange(0, BLOCK_HW)
            mask = cmask[:, None] & (hw < hw_hi)[None, :]
            x_offs = x_base + c[:, None] * stride_xc + hw[None, :] * stride_xp
            dy_offs = dy_base + c[:, None] * stride_dc + hw[None, :] * stride_dp
            xhat, dh = dh_tile(X, DY, x_offs, dy_offs, mask, mean, rstd, a[:, None], bb[:, None])
            s1 += tl.sum(dh, axis=1)
            s2 += tl.sum(dh * xhat, axis=1)
        nc = n * C + g * CG + c
        tl.store(PART + pid_s * NC + nc, s1, mask=cmask)
        tl.store(PART + (tl.num_programs(1) + pid_s) * NC + nc, s2, mask=cmask)


@triton.heuristics(heuristics("_gns_bwd_kernel"))
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
        a, bb = channel_affine(W, B, SCALE, SHIFT, n, g * CG + c, cmask, stride_sn, stride_tn, HAS_SCALE, HAS_SHIFT)
        if SPLIT:
            s1 = tl.load(SUMS + nc, mask=cmask, other=0.0)
            s2 = tl.load(SUMS + NC + nc, mask=cmask, other=0.0)
        else:
            s1 = tl.zeros([BLOCK_C], dtype=tl.float32)
            s2 = tl.zeros([BLOCK_C], dtype=tl.float32)
            for hb in range(0, HW, BLOCK_HW):
                hw = hb + tl.arange(0, BLOCK_HW)
                mask = cmask[:, None] & (hw < HW)[None, :]
                x_offs = x_base + c[:, None] * stride_xc + hw[None, :] * stride_xp
                dy_offs = dy_base + c[:, None] * stride_dc + hw[None, :] * stride_dp
                xhat, dh = dh_tile(X, DY, x_offs, dy_offs, mask, mean, rstd, a[:, None], bb[:, None])
                s1 += tl.sum(dh, axis=1)
                s2 += tl.sum(dh * xhat, axis=1)
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
        a, bb = channel_affine(W, B, SCALE, SHIFT, n, g * CG + c, cmask, stride_sn, stride_tn, HAS_SCALE, HAS_SHIFT)
        for hb in range(hw_lo, hw_hi, BLOCK_HW):
            hw = hb + tl.arange(0, BLOCK_HW)
            mask = cmask[:, None] & (hw < hw_hi)[None, :]
            x_offs = x_base + c[:, None] * stride_xc + hw[None, :] * stride_xp
            dy_offs = dy_base + c[:, None] * stride_dc + hw[None, :] * stride_dp
            xhat, dh = dh_tile(X, DY, x_offs, dy_offs, mask, mean, rstd, a[:, None], bb[:, None])
            dx = dx_tile(dh, xhat, a[:, None], rstd, c1, c2)
            dx_offs = dx_base + c[:, None] * stride_gc + hw[None, :] * stride_gp
            tl.store(DX + dx_offs, dx.to(DX.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- launchers


# the package's launchers, run on the kernels above
PRE = GroupKernels(_gns_stats_kernel, _gns_fwd_kernel, _gns_bwd_reduce_kernel, _gns_bwd_kernel)


def group_norm_silu_fwd_pre(x, weight, bias, scale, shift, groups, eps):
    return group_norm_silu_fwd_groups(x, weight, bias, scale, shift, groups, eps, kernels=PRE)


def group_norm_silu_bwd_pre(dy, x, weight, bias, scale, shift, mean, rstd, groups, eps):
    return group_norm_silu_bwd_groups(dy, x, weight, bias, scale, shift, mean, rstd, groups, eps, kernels=PRE)


class _GroupNormSiLUPre(torch.autograd.Function):
    """group_norm_silu's contract on the kernels above (the provider's forward and backward)."""

    @staticmethod
    def forward(ctx, x, weight, bias, scale, shift, groups, eps):
        y, mean, rstd = group_norm_silu_fwd_pre(x, weight, bias, scale, shift, groups, eps)
        ctx.save_for_backward(x, weight, bias, scale, shift, mean, rstd)
        ctx.groups, ctx.eps = groups, eps
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias, scale, shift, mean, rstd = ctx.saved_tensors
        dx, dw, db, ds, dt = group_norm_silu_bwd_pre(dy, x, weight, bias, scale, shift, mean, rstd, ctx.groups,
                                                     ctx.eps)
        return dx, dw, db, ds if scale is not None else None, dt if shift is not None else None, None, None


def group_norm_silu_pre8a0dcf0(x, weight, bias, groups: int, eps: float = 1e-5, scale=None, shift=None):
    """group_norm_silu's signature on the pre-8a0dcf0 group kernels."""
    return _GroupNormSiLUPre.apply(x, weight, bias, scale, shift, groups, float(eps))
