"""Channels-last GroupNorm-SiLU by pixel rows: Triton kernels and launchers (same math and contract
as the group kernels; formulas in the package docstring).

Why: a channels-last tensor stores the C channels of a pixel next to each other, so the group
kernels of groups.py, one program per (sample, group), read CG contiguous values per pixel
and skip C - CG: with 4 bf16 channels per group, 8 useful bytes of every 32-byte sector. On an
H200 they reached 0.1-0.2 of the copy bandwidth channels-last against 0.3-0.44 NCHW
(benchmarks/results/logs/gpu/bench_group_norm_silu_h200_8a0dcf0.log). Here every program owns a chunk
of pixels of one sample with ALL their channels, a [BLOCK_P, BLOCK_C] tile being BLOCK_P whole
rows of memory, and the per-group reductions run over small per-channel partials instead:

forward
    A  _rows_stats_kernel        grid (N, S): per-channel (mean, m2) of pixel chunk s (per-lane
                                 Welford over tiles, lanes combined exactly) -> PART (2, N, S, C)
    B  _rows_group_stats_kernel  grid (N*G,): Chan-combine the group's S x CG partials in a fixed
                                 order: mean = sum cnt*mean_sc / M,
                                 m2 = sum m2_sc + cnt * (mean_sc - mean)^2 -> MEAN, RSTD (N*G,)
    C  _rows_fwd_kernel          grid (N, S): y = silu(xhat * a + bb), per-channel constants
                                 gathered from the group statistics
backward
    D  _rows_bwd_reduce_kernel   grid (N, S): per-channel s1, s2 of chunk s -> PART (2, S, N, C),
                                 the layout `param_grads` sums (fixed order) into
                                 SUMS (2, N, C) while it writes the parameter gradients
    E  _rows_coef_kernel         grid (N*G,): c1 = sum_{c in g} a*s1 / M, c2 = sum a*s2 / M
    F  _rows_dx_kernel           grid (N, S): dx = rstd * (dh*a - c1 - xhat*c2)

No atomics: every sum runs in a fixed order, so results are bitwise reproducible. The rows path
takes channels-last inputs with C <= MAX_ROWS_CHANNELS; `design.choose_design`
chooses between it and the group kernels.
"""
import torch

from ..bodies import tl, triton
from ..launch import forced_plan, split_plan
from ..layout import as_n_c_p, write_back
from .param_grads import grad_outputs, launch_param_grads
from .tiles import channel_affine, dh_tile, dx_tile, modulation, silu

MAX_ROWS_CHANNELS = 2048  # one tile row holds all channels of a pixel


def _rows_block_c(args) -> int:
    return triton.next_power_of_2(args["C"])


def _rows_block_p(args) -> int:
    tile = 8192 if args["X"].device.type == "cpu" else 4096  # elements per tile (interpreter: fewer steps)
    return max(1, min(triton.next_power_of_2(args["P_SPLIT"]), tile // args["BLOCK_C"]))


_ROWS_HEURISTICS = {
    "BLOCK_C": _rows_block_c,
    "BLOCK_P": _rows_block_p,
    "num_warps": lambda args: 8 if args["BLOCK_C"] * args["BLOCK_P"] >= 2048 else 4,
}


@triton.jit
def _group_gather(T, n, c, cmask, G, CG):
    """T[n*G + c // CG] for a block of channels: a group value broadcast to its channels."""
    return tl.load(T + n * G + c // CG, mask=cmask, other=0.0)


@triton.jit
def _rows_channel_constants(W, B, SCALE, SHIFT, MEAN, RSTD, n, c, cmask, G, CG, stride_sn, stride_tn,
                            HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr):
    """Per channel of sample n: a, bb (the affine) and the group's mean, rstd broadcast to it."""
    a, bb = channel_affine(W, B, SCALE, SHIFT, n, c, cmask, stride_sn, stride_tn, HAS_SCALE, HAS_SHIFT)
    return a, bb, _group_gather(MEAN, n, c, cmask, G, CG), _group_gather(RSTD, n, c, cmask, G, CG)


@triton.jit
def _rows_chunk(C, HW, P_SPLIT, BLOCK_C: tl.constexpr):
    """This program's sample and pixels, all channels: (n, s, p_lo, p_hi, c, cmask). Grid (N, S)."""
    n = tl.program_id(0)
    s = tl.program_id(1)
    p_lo = s * P_SPLIT
    c = tl.arange(0, BLOCK_C)
    return n, s, p_lo, tl.minimum(p_lo + P_SPLIT, HW), c, c < C


@triton.jit
def _rows_tile_dh(X, DY, x_base, dy_base, pb, p_hi, c, cmask, mean, rstd, a, bb, stride_xc, stride_xp, stride_dc,
                  stride_dp, BLOCK_P: tl.constexpr):
    """Pixel rows pb .. pb+BLOCK_P-1 (< p_hi) of the channels c: (p, mask, xhat, dh)."""
    p = pb + tl.arange(0, BLOCK_P)
    mask = (p < p_hi)[:, None] & cmask[None, :]
    x_offs = x_base + p[:, None] * stride_xp + c[None, :] * stride_xc
    dy_offs = dy_base + p[:, None] * stride_dp + c[None, :] * stride_dc
    xhat, dh = dh_tile(X, DY, x_offs, dy_offs, mask, mean[None, :], rstd[None, :], a[None, :], bb[None, :])
    return p, mask, xhat, dh


@triton.jit
def _partials_tile(sb, cb, n, g, C, CG, HW, P_SPLIT, S, BLOCK_S: tl.constexpr, BLOCK_CG: tl.constexpr):
    """Chunks sb .. sb+BLOCK_S-1 x the group's channels cb .. cb+BLOCK_CG-1 of a (N, S, C) partial:
    (offsets, mask, pixels per chunk)."""
    s = sb + tl.arange(0, BLOCK_S)
    c = cb + tl.arange(0, BLOCK_CG)
    mask = (s < S)[:, None] & (c < CG)[None, :]
    cnt = tl.minimum(P_SPLIT, HW - s * P_SPLIT).to(tl.float32)
    return (n * S + s[:, None]) * C + g * CG + c[None, :], mask, cnt[:, None]


@triton.heuristics(_ROWS_HEURISTICS)
@triton.jit
def _rows_stats_kernel(
    X,  # pointer to x, shape (N, C, HW), strides (stride_xn, stride_xc, stride_xp)
    PART,  # out: per-chunk channel (mean, m2), shape (2, N, S, C) fp32
    C, HW, P_SPLIT, S,  # channels, pixels per channel, pixels per chunk, chunks per sample
    stride_xn, stride_xc, stride_xp,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """A: per-channel statistics of pixel chunk (n, s). Grid (N, S)."""
    n, s, p_lo, p_hi, c, cmask = _rows_chunk(C, HW, P_SPLIT, BLOCK_C)
    x_base = n.to(tl.int64) * stride_xn
    mean_v = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    m2_v = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    n_v = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    for pb in range(p_lo, p_hi, BLOCK_P):  # per-lane Welford: no cross-lane reduction in the loop
        p = pb + tl.arange(0, BLOCK_P)
        mask = (p < p_hi)[:, None] & cmask[None, :]
        x = tl.load(X + x_base + p[:, None] * stride_xp + c[None, :] * stride_xc, mask=mask, other=0.0)
        x = x.to(tl.float32)
        n_v += mask.to(tl.float32)
        delta = tl.where(mask, x - mean_v, 0.0)
        mean_v += delta / tl.maximum(n_v, 1.0)
        m2_v += tl.where(mask, delta * (x - mean_v), 0.0)
    # lanes of a channel combined exactly: mean = sum n_l mean_l / n, m2 = sum m2_l + n_l (mean_l - mean)^2
    count = tl.sum(n_v, axis=0)
    mean = tl.sum(n_v * mean_v, axis=0) / tl.maximum(count, 1.0)
    d = mean_v - mean[None, :]
    m2 = tl.sum(m2_v + n_v * d * d, axis=0)
    NSC = tl.num_programs(0) * S * C
    off = (n * S + s) * C + c
    tl.store(PART + off, mean, mask=cmask)
    tl.store(PART + NSC + off, m2, mask=cmask)


@triton.jit
def _rows_group_stats_kernel(
    PART,  # per-chunk channel (mean, m2), shape (2, N, S, C) fp32
    MEAN, RSTD,  # out: mean and rstd, shape (N*G,) fp32
    N, C, G, CG, HW,  # samples, channels, groups, channels per group, pixels per channel
    P_SPLIT, S,  # pixels per chunk, chunks per sample
    eps,  # float, pinned to fp32 below
    BLOCK_S: tl.constexpr, BLOCK_CG: tl.constexpr,
):
    """B: group statistics from the (S, CG) partials of group (n, g), two passes over them. Grid (N*G,)."""
    pid = tl.program_id(0)
    n = pid // G
    g = pid % G
    eps = tl.cast(eps, tl.float32)
    NSC = N * S * C
    inv_m = 1.0 / (CG * HW * 1.0)  # a float even when CG = HW = 1 (constexprs)
    acc = tl.zeros([BLOCK_S, BLOCK_CG], dtype=tl.float32)
    for sb in range(0, S, BLOCK_S):  # mean = sum cnt * mean_sc / M
        for cb in range(0, CG, BLOCK_CG):
            off, mask, cnt = _partials_tile(sb, cb, n, g, C, CG, HW, P_SPLIT, S, BLOCK_S, BLOCK_CG)
            acc += tl.where(mask, cnt * tl.load(PART + off, mask=mask, other=0.0), 0.0)
    mean = tl.sum(acc) * inv_m
    acc = tl.zeros([BLOCK_S, BLOCK_CG], dtype=tl.float32)
    for sb in range(0, S, BLOCK_S):  # m2 = sum m2_sc + cnt * (mean_sc - mean)^2
        for cb in range(0, CG, BLOCK_CG):
            off, mask, cnt = _partials_tile(sb, cb, n, g, C, CG, HW, P_SPLIT, S, BLOCK_S, BLOCK_CG)
            d = tl.load(PART + off, mask=mask, other=0.0) - mean
            acc += tl.where(mask, tl.load(PART + NSC + off, mask=mask, other=0.0) + cnt * d * d, 0.0)
    m2 = tl.sum(acc)
    tl.store(MEAN + pid, mean)
    tl.store(RSTD + pid, tl.rsqrt(m2 * inv_m + eps))


@triton.heuristics(_ROWS_HEURISTICS)
@triton.jit
def _rows_fwd_kernel(
    X, Y, W, B, SCALE, SHIFT,  # as in groups._gns_fwd_kernel
    MEAN, RSTD,  # mean and rstd, shape (N*G,) fp32
    C, G, CG, HW, P_SPLIT,  # channels, groups, channels per group, pixels per channel, pixels per chunk
    stride_sn, stride_tn, stride_xn, stride_xc, stride_xp, stride_yn, stride_yc, stride_yp,
    HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """C: y for pixel chunk (n, s), all channels. Grid (N, S)."""
    n, s, p_lo, p_hi, c, cmask = _rows_chunk(C, HW, P_SPLIT, BLOCK_C)
    a, bb, mean, rstd = _rows_channel_constants(W, B, SCALE, SHIFT, MEAN, RSTD, n, c, cmask, G, CG, stride_sn,
                                                stride_tn, HAS_SCALE, HAS_SHIFT)
    A = rstd * a  # h = (x - mean) * A + bb
    x_base = n.to(tl.int64) * stride_xn
    y_base = n.to(tl.int64) * stride_yn
    for pb in range(p_lo, p_hi, BLOCK_P):
        p = pb + tl.arange(0, BLOCK_P)
        mask = (p < p_hi)[:, None] & cmask[None, :]
        x = tl.load(X + x_base + p[:, None] * stride_xp + c[None, :] * stride_xc, mask=mask, other=0.0)
        y = silu((x.to(tl.float32) - mean[None, :]) * A[None, :] + bb[None, :])
        tl.store(Y + y_base + p[:, None] * stride_yp + c[None, :] * stride_yc, y.to(Y.dtype.element_ty), mask=mask)


@triton.heuristics(_ROWS_HEURISTICS)
@triton.jit
def _rows_bwd_reduce_kernel(
    X, DY,  # pointers to x and dy, shape (N, C, HW), strides (stride_xn, ...), (stride_dn, ...)
    W, B, SCALE, SHIFT, MEAN, RSTD,  # as in _rows_fwd_kernel
    PART,  # out: per-chunk channel sums (s1, s2), shape (2, S, N, C) fp32
    N, C, G, CG, HW, P_SPLIT,  # samples, channels, groups, channels per group, pixels per channel, per chunk
    stride_sn, stride_tn, stride_xn, stride_xc, stride_xp, stride_dn, stride_dc, stride_dp,
    HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """D: s1 = sum dh, s2 = sum dh*xhat per channel over pixel chunk (n, s). Grid (N, S)."""
    n, s, p_lo, p_hi, c, cmask = _rows_chunk(C, HW, P_SPLIT, BLOCK_C)
    a, bb, mean, rstd = _rows_channel_constants(W, B, SCALE, SHIFT, MEAN, RSTD, n, c, cmask, G, CG, stride_sn,
                                                stride_tn, HAS_SCALE, HAS_SHIFT)
    x_base = n.to(tl.int64) * stride_xn
    dy_base = n.to(tl.int64) * stride_dn
    acc1 = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)  # lane sums: one reduction after the loop
    acc2 = tl.zeros_like(acc1)
    for pb in range(p_lo, p_hi, BLOCK_P):
        _, _, xhat, dh = _rows_tile_dh(X, DY, x_base, dy_base, pb, p_hi, c, cmask, mean, rstd, a, bb, stride_xc,
                                       stride_xp, stride_dc, stride_dp, BLOCK_P)
        acc1 += dh
        acc2 += dh * xhat
    NC = N * C
    tl.store(PART + s * NC + n * C + c, tl.sum(acc1, axis=0), mask=cmask)
    tl.store(PART + (tl.num_programs(1) + s) * NC + n * C + c, tl.sum(acc2, axis=0), mask=cmask)


@triton.jit
def _rows_coef_kernel(
    SUMS,  # channel sums (s1, s2), shape (2, N, C) fp32
    W, B, SCALE, SHIFT,  # as in _rows_fwd_kernel
    COEF,  # out: (c1, c2), shape (2, N*G) fp32
    N, C, G, CG, HW,  # samples, channels, groups, channels per group, pixels per channel
    stride_sn, stride_tn, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, BLOCK_CG: tl.constexpr,
):
    """E: c1 = sum_{c in g} a*s1 / M, c2 = sum_{c in g} a*s2 / M for group (n, g). Grid (N*G,)."""
    pid = tl.program_id(0)
    n = pid // G
    g = pid % G
    c1 = 0.0
    c2 = 0.0
    for cb in range(0, CG, BLOCK_CG):
        c = g * CG + cb + tl.arange(0, BLOCK_CG)
        cmask = (cb + tl.arange(0, BLOCK_CG)) < CG
        a, _ = channel_affine(W, B, SCALE, SHIFT, n, c, cmask, stride_sn, stride_tn, HAS_SCALE, HAS_SHIFT)
        c1 += tl.sum(a * tl.load(SUMS + n * C + c, mask=cmask, other=0.0))
        c2 += tl.sum(a * tl.load(SUMS + N * C + n * C + c, mask=cmask, other=0.0))
    inv_m = 1.0 / (CG * HW * 1.0)  # a float even when CG = HW = 1 (constexprs)
    tl.store(COEF + pid, c1 * inv_m)
    tl.store(COEF + N * G + pid, c2 * inv_m)


@triton.heuristics(_ROWS_HEURISTICS)
@triton.jit
def _rows_dx_kernel(
    X, DY,  # as in _rows_bwd_reduce_kernel
    DX,  # out: dx, shape (N, C, HW), strides (stride_gn, stride_gc, stride_gp)
    W, B, SCALE, SHIFT, MEAN, RSTD,  # as in _rows_bwd_reduce_kernel
    COEF,  # (c1, c2), shape (2, N*G) fp32
    N, C, G, CG, HW, P_SPLIT,  # as in _rows_bwd_reduce_kernel
    stride_sn, stride_tn, stride_xn, stride_xc, stride_xp, stride_dn, stride_dc, stride_dp,
    stride_gn, stride_gc, stride_gp,
    HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """F: dx = rstd * (dh*a - c1 - xhat*c2) for pixel chunk (n, s), all channels. Grid (N, S)."""
    n, s, p_lo, p_hi, c, cmask = _rows_chunk(C, HW, P_SPLIT, BLOCK_C)
    a, bb, mean, rstd = _rows_channel_constants(W, B, SCALE, SHIFT, MEAN, RSTD, n, c, cmask, G, CG, stride_sn,
                                                stride_tn, HAS_SCALE, HAS_SHIFT)
    c1 = _group_gather(COEF, n, c, cmask, G, CG)
    c2 = _group_gather(COEF + N * G, n, c, cmask, G, CG)
    x_base = n.to(tl.int64) * stride_xn
    dy_base = n.to(tl.int64) * stride_dn
    dx_base = n.to(tl.int64) * stride_gn
    for pb in range(p_lo, p_hi, BLOCK_P):
        p, mask, xhat, dh = _rows_tile_dh(X, DY, x_base, dy_base, pb, p_hi, c, cmask, mean, rstd, a, bb, stride_xc,
                                          stride_xp, stride_dc, stride_dp, BLOCK_P)
        dx = dx_tile(dh, xhat, a[None, :], rstd[None, :], c1[None, :], c2[None, :])
        dx_offs = dx_base + p[:, None] * stride_gp + c[None, :] * stride_gc
        tl.store(DX + dx_offs, dx.to(DX.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- launchers


def rows_supported(x: torch.Tensor) -> bool:
    """The rows kernels apply: channels contiguous (channels-last) and not too many of them."""
    return x.dim() >= 3 and x.shape[1] <= MAX_ROWS_CHANNELS and as_n_c_p(x).stride(1) == 1


def _plan(x3: torch.Tensor, p_split: int | None) -> tuple[int, int]:
    n, c, hw = x3.shape
    if p_split is not None:
        return forced_plan(hw, p_split)
    return split_plan(n, hw, c, x3.device)


def _small_blocks(s: int, cg: int) -> dict:
    return {"BLOCK_S": min(64, triton.next_power_of_2(s)), "BLOCK_CG": min(64, triton.next_power_of_2(cg))}


def group_norm_silu_fwd_rows(x, weight, bias, scale, shift, groups: int, eps: float, p_split: int | None = None):
    """As `group_norm_silu_fwd_triton`, for channels-last x (`rows_supported`)."""
    weight, bias = weight.contiguous(), bias.contiguous()
    y = torch.empty_like(x)
    x3, y3 = as_n_c_p(x), as_n_c_p(y)
    n, c, hw = x3.shape
    cg = c // groups
    s, chunk = _plan(x3, p_split)
    (scale_t, stride_sn), (shift_t, stride_tn) = modulation(scale, weight), modulation(shift, weight)
    mean = torch.empty((n, groups), device=x.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    part = torch.empty((2, n, s, c), device=x.device, dtype=torch.float32)
    _rows_stats_kernel[(n, s)](x3, part, c, hw, chunk, s, *x3.stride())
    blocks = _small_blocks(s, cg)
    _rows_group_stats_kernel[(n * groups,)](part, mean, rstd, n, c, groups, cg, hw, chunk, s, float(eps),
                                             BLOCK_S=blocks["BLOCK_S"], BLOCK_CG=blocks["BLOCK_CG"])
    _rows_fwd_kernel[(n, s)](
        x3, y3, weight, bias, scale_t, shift_t, mean, rstd, c, groups, cg, hw, chunk,
        stride_sn, stride_tn, *x3.stride(), *y3.stride(), HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None,
    )  # fmt: skip
    return write_back(y, y3), mean, rstd


def group_norm_silu_bwd_rows(dy, x, weight, bias, scale, shift, mean, rstd, groups: int, eps: float,
                             p_split: int | None = None):
    """As `group_norm_silu_bwd_triton`, for channels-last x (`rows_supported`)."""
    weight, bias = weight.contiguous(), bias.contiguous()
    dx, dweight, dbias, dscale, dshift = grad_outputs(x, weight, bias, scale, shift)
    x3, dy3, dx3 = as_n_c_p(x), as_n_c_p(dy), as_n_c_p(dx)
    n, c, hw = x3.shape
    cg = c // groups
    s, chunk = _plan(x3, p_split)
    (scale_t, stride_sn), (shift_t, stride_tn) = modulation(scale, weight), modulation(shift, weight)
    flags = dict(HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None)
    mean, rstd = mean.contiguous(), rstd.contiguous()
    sums = torch.empty((2, n, c), device=x.device, dtype=torch.float32)
    part = torch.empty((2, s, n, c), device=x.device, dtype=torch.float32) if s > 1 else sums
    coef = torch.empty((2, n * groups), device=x.device, dtype=torch.float32)
    _rows_bwd_reduce_kernel[(n, s)](
        x3, dy3, weight, bias, scale_t, shift_t, mean, rstd, part, n, c, groups, cg, hw, chunk,
        stride_sn, stride_tn, *x3.stride(), *dy3.stride(), **flags,
    )  # fmt: skip
    launch_param_grads(part, sums, weight, bias, scale_t, stride_sn, scale is not None, dweight, dbias, dscale, dshift)
    _rows_coef_kernel[(n * groups,)](sums, weight, bias, scale_t, shift_t, coef, n, c, groups, cg, hw,
                                     stride_sn, stride_tn, BLOCK_CG=_small_blocks(s, cg)["BLOCK_CG"], **flags)
    _rows_dx_kernel[(n, s)](
        x3, dy3, dx3, weight, bias, scale_t, shift_t, mean, rstd, coef, n, c, groups, cg, hw, chunk,
        stride_sn, stride_tn, *x3.stride(), *dy3.stride(), *dx3.stride(), **flags,
    )  # fmt: skip
    return write_back(dx, dx3), dweight, dbias, dscale, dshift
