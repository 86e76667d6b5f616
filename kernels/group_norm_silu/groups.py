"""GroupNorm-SiLU by groups: Triton kernels and launchers (formulas in the package docstring).

Parallelism: one program per (n, g) group, looping over it twice (statistics, then output; the
second read mostly hits L2). When N*G programs cannot fill the device the group's pixels are split
over S programs ("split reduction"): a statistics kernel writes per-split (count, mean, m2) and
every split program combines them in the same fixed order; in the backward, per-split s1/s2 are
written and summed over splits in a fixed order. No atomics anywhere, so all gradients are
bitwise reproducible. Statistics: per-lane Welford over the tiles, lanes then combined around the
group mean.
"""
from collections.abc import Callable
from typing import NamedTuple

import torch

from ..bodies import tl, triton
from ..launch import forced_plan, split_plan
from ..layout import as_n_c_p, write_back
from .param_grads import grad_outputs, launch_param_grads
from .registers import maxnreg
from .tiles import channel_affine, dh_tile, dx_tile, modulation, silu


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


HEURISTICS = {
    "BLOCK_C": _block_c,
    "BLOCK_HW": _block_hw,
    "num_warps": lambda args: 8 if args["BLOCK_C"] * args["BLOCK_HW"] >= 2048 else 4,
}


def heuristics(kernel: str) -> dict:
    """HEURISTICS plus the kernel's register budget on a GPU (registers.py; None: ptxas chooses)."""

    def budget(args) -> int | None:
        if args["X"].device.type != "cuda":
            return None
        return maxnreg(kernel, args["stride_xc"] == 1, args["BLOCK_C"], args["BLOCK_HW"], args["num_warps"])

    return {**HEURISTICS, "maxnreg": budget}


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
def group_stats_from_partials(
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


@triton.jit
def _program_chunk(G, HW, HW_PER_SPLIT):
    """This program's group and pixels: (pid_ng, pid_s, n, g, hw_lo, hw_hi). Grid (N*G, S)."""
    pid_ng = tl.program_id(0)
    pid_s = tl.program_id(1)
    hw_lo = pid_s * HW_PER_SPLIT
    return pid_ng, pid_s, pid_ng // G, pid_ng % G, hw_lo, tl.minimum(hw_lo + HW_PER_SPLIT, HW)


@triton.jit
def _group_base(n, g, CG, stride_n, stride_c):
    """Offset of element [n, g*CG, 0] of a (N, C, HW) tensor (int64: big tensors)."""
    return n.to(tl.int64) * stride_n + (g * CG).to(tl.int64) * stride_c


@triton.jit
def _channel_block(cb, n, g, CG, W, B, SCALE, SHIFT, stride_sn, stride_tn, HAS_SCALE: tl.constexpr,
                   HAS_SHIFT: tl.constexpr, BLOCK_C: tl.constexpr):
    """Channels cb .. cb+BLOCK_C-1 of group (n, g): (c, cmask, a, bb), c counted within the group."""
    c = cb + tl.arange(0, BLOCK_C)
    cmask = c < CG
    a, bb = channel_affine(W, B, SCALE, SHIFT, n, g * CG + c, cmask, stride_sn, stride_tn, HAS_SCALE, HAS_SHIFT)
    return c, cmask, a, bb


@triton.jit
def _pixel_tile_dh(X, DY, x_base, dy_base, c, cmask, hb, hw_hi, mean, rstd, a, bb, stride_xc, stride_xp, stride_dc,
                   stride_dp, BLOCK_HW: tl.constexpr):
    """The tile of channel block c and pixels hb .. hb+BLOCK_HW-1 (< hw_hi): (hw, mask, xhat, dh)."""
    hw = hb + tl.arange(0, BLOCK_HW)
    mask = cmask[:, None] & (hw < hw_hi)[None, :]
    x_offs = x_base + c[:, None] * stride_xc + hw[None, :] * stride_xp
    dy_offs = dy_base + c[:, None] * stride_dc + hw[None, :] * stride_dp
    xhat, dh = dh_tile(X, DY, x_offs, dy_offs, mask, mean, rstd, a[:, None], bb[:, None])
    return hw, mask, xhat, dh


@triton.jit
def _channel_sums(X, DY, x_base, dy_base, c, cmask, hw_lo, hw_hi, mean, rstd, a, bb, stride_xc, stride_xp,
                  stride_dc, stride_dp, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    """s1 = sum dh, s2 = sum dh*xhat per channel of block c over pixels hw_lo:hw_hi; lane sums in the
    loop, one reduction after it."""
    acc1 = tl.zeros([BLOCK_C, BLOCK_HW], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK_C, BLOCK_HW], dtype=tl.float32)
    for hb in range(hw_lo, hw_hi, BLOCK_HW):
        _, _, xhat, dh = _pixel_tile_dh(X, DY, x_base, dy_base, c, cmask, hb, hw_hi, mean, rstd, a, bb, stride_xc,
                                        stride_xp, stride_dc, stride_dp, BLOCK_HW)
        acc1 += dh
        acc2 += dh * xhat
    return tl.sum(acc1, axis=1), tl.sum(acc2, axis=1)


@triton.heuristics(heuristics("_gns_stats_kernel"))
@triton.jit
def _gns_stats_kernel(
    X,  # pointer to x, shape (N, C, HW), strides (stride_xn, stride_xc, stride_xp)
    PART,  # out: partial (count, mean, m2), shape (3, N*G, S) fp32
    G, CG, HW,  # groups, channels per group, pixels per channel
    HW_PER_SPLIT, S,  # pixels per split program, splits per group
    stride_xn, stride_xc, stride_xp,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):
    """Split reduction, step 1: statistics of chunk (n, g, s). Grid (N*G, S)."""
    pid_ng, pid_s, n, g, hw_lo, hw_hi = _program_chunk(G, HW, HW_PER_SPLIT)
    x_base = _group_base(n, g, CG, stride_xn, stride_xc)
    count, mean, m2 = _chunk_stats(X, x_base, CG, hw_lo, hw_hi, stride_xc, stride_xp, BLOCK_C, BLOCK_HW)
    NG = tl.num_programs(0)
    tl.store(PART + pid_ng * S + pid_s, count)
    tl.store(PART + (NG + pid_ng) * S + pid_s, mean)
    tl.store(PART + (2 * NG + pid_ng) * S + pid_s, m2)


@triton.heuristics(heuristics("_gns_fwd_kernel"))
@triton.jit
def _gns_fwd_kernel(
    X, Y,  # pointers to x and out: y, shape (N, C, HW), strides (stride_xn, ...), (stride_yn, ...)
    W, B,  # pointers to weight and bias, shape (C,)
    SCALE, SHIFT,  # (N, C), strides (stride_sn, 1), (stride_tn, 1); read only if HAS_SCALE / HAS_SHIFT
    MEAN, RSTD,  # out: mean and rstd, shape (N*G,) fp32
    PART,  # partial statistics, shape (3, N*G, S) fp32; read only if SPLIT
    C, G, CG, HW,  # channels, groups, channels per group, pixels per channel
    HW_PER_SPLIT, S,  # pixels per split program (HW when S == 1), splits per group
    eps,  # float, pinned to fp32 below
    stride_sn, stride_tn, stride_xn, stride_xc, stride_xp, stride_yn, stride_yc, stride_yp,
    SPLIT: tl.constexpr,  # statistics from _gns_stats_kernel's partials instead of this program
    HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):
    """y for chunk (n, g, s). Grid (N*G, S)."""
    pid_ng, pid_s, n, g, hw_lo, hw_hi = _program_chunk(G, HW, HW_PER_SPLIT)
    eps = tl.cast(eps, tl.float32)
    x_base = _group_base(n, g, CG, stride_xn, stride_xc)
    y_base = _group_base(n, g, CG, stride_yn, stride_yc)
    if SPLIT:
        count, mean, m2 = group_stats_from_partials(PART, pid_ng, tl.num_programs(0), S)
    else:
        count, mean, m2 = _chunk_stats(X, x_base, CG, 0, HW, stride_xc, stride_xp, BLOCK_C, BLOCK_HW)
    rstd = tl.rsqrt(m2 / count + eps)
    if pid_s == 0:
        tl.store(MEAN + pid_ng, mean)
        tl.store(RSTD + pid_ng, rstd)

    for cb in range(0, CG, BLOCK_C):
        c, cmask, a, bb = _channel_block(cb, n, g, CG, W, B, SCALE, SHIFT, stride_sn, stride_tn, HAS_SCALE,
                                         HAS_SHIFT, BLOCK_C)
        for hb in range(hw_lo, hw_hi, BLOCK_HW):
            hw = hb + tl.arange(0, BLOCK_HW)
            mask = cmask[:, None] & (hw < hw_hi)[None, :]
            x = tl.load(X + x_base + c[:, None] * stride_xc + hw[None, :] * stride_xp, mask=mask, other=0.0)
            xhat = (x.to(tl.float32) - mean) * rstd
            y = silu(xhat * a[:, None] + bb[:, None])
            y_offs = y_base + c[:, None] * stride_yc + hw[None, :] * stride_yp
            tl.store(Y + y_offs, y.to(Y.dtype.element_ty), mask=mask)


@triton.heuristics(heuristics("_gns_bwd_reduce_kernel"))
@triton.jit
def _gns_bwd_reduce_kernel(
    X, DY, W, B, SCALE, SHIFT, MEAN, RSTD,  # as in _gns_bwd_kernel
    PART,  # out: per-split channel sums (s1, s2), shape (2, S, N, C) fp32
    N, C, G, CG, HW, HW_PER_SPLIT,  # as in _gns_bwd_kernel
    stride_sn, stride_tn, stride_xn, stride_xc, stride_xp, stride_dn, stride_dc, stride_dp,
    HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):
    """Split reduction of the backward: s1, s2 over chunk (n, g, s). Grid (N*G, S)."""
    pid_ng, pid_s, n, g, hw_lo, hw_hi = _program_chunk(G, HW, HW_PER_SPLIT)
    x_base = _group_base(n, g, CG, stride_xn, stride_xc)
    dy_base = _group_base(n, g, CG, stride_dn, stride_dc)
    mean = tl.load(MEAN + pid_ng)
    rstd = tl.load(RSTD + pid_ng)
    NC = N * C
    for cb in range(0, CG, BLOCK_C):
        c, cmask, a, bb = _channel_block(cb, n, g, CG, W, B, SCALE, SHIFT, stride_sn, stride_tn, HAS_SCALE,
                                         HAS_SHIFT, BLOCK_C)
        s1, s2 = _channel_sums(X, DY, x_base, dy_base, c, cmask, hw_lo, hw_hi, mean, rstd, a, bb, stride_xc,
                               stride_xp, stride_dc, stride_dp, BLOCK_C, BLOCK_HW)
        nc = n * C + g * CG + c
        tl.store(PART + pid_s * NC + nc, s1, mask=cmask)
        tl.store(PART + (tl.num_programs(1) + pid_s) * NC + nc, s2, mask=cmask)


@triton.heuristics(heuristics("_gns_bwd_kernel"))
@triton.jit
def _gns_bwd_kernel(
    X, DY,  # pointers to x and dy, shape (N, C, HW), strides (stride_xn, ...), (stride_dn, ...)
    DX,  # out: dx, shape (N, C, HW), strides (stride_gn, stride_gc, stride_gp)
    W, B, SCALE, SHIFT,  # as in _gns_fwd_kernel
    MEAN, RSTD,  # mean and rstd, shape (N*G,) fp32
    SUMS,  # channel sums (s1, s2), shape (2, N, C) fp32: written here unless SPLIT, else read
    N, C, G, CG, HW,  # samples, channels, groups, channels per group, pixels per channel
    HW_PER_SPLIT,  # pixels per split program (HW when not SPLIT)
    stride_sn, stride_tn, stride_xn, stride_xc, stride_xp, stride_dn, stride_dc, stride_dp,
    stride_gn, stride_gc, stride_gp,
    SPLIT: tl.constexpr,  # s1, s2 already reduced by _gns_bwd_reduce_kernel + a fixed-order sum
    HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):
    """dx for chunk (n, g, s), and s1, s2 when one program owns the group. Grid (N*G, S)."""
    pid_ng, pid_s, n, g, hw_lo, hw_hi = _program_chunk(G, HW, HW_PER_SPLIT)
    x_base = _group_base(n, g, CG, stride_xn, stride_xc)
    dy_base = _group_base(n, g, CG, stride_dn, stride_dc)
    dx_base = _group_base(n, g, CG, stride_gn, stride_gc)
    mean = tl.load(MEAN + pid_ng)
    rstd = tl.load(RSTD + pid_ng)
    NC = N * C

    # c1 * M = sum_c a*s1,  c2 * M = sum_c a*s2  over the group's channels
    c1 = 0.0
    c2 = 0.0
    for cb in range(0, CG, BLOCK_C):
        c, cmask, a, bb = _channel_block(cb, n, g, CG, W, B, SCALE, SHIFT, stride_sn, stride_tn, HAS_SCALE,
                                         HAS_SHIFT, BLOCK_C)
        nc = n * C + g * CG + c
        if SPLIT:
            s1 = tl.load(SUMS + nc, mask=cmask, other=0.0)
            s2 = tl.load(SUMS + NC + nc, mask=cmask, other=0.0)
        else:
            s1, s2 = _channel_sums(X, DY, x_base, dy_base, c, cmask, 0, HW, mean, rstd, a, bb, stride_xc, stride_xp,
                                   stride_dc, stride_dp, BLOCK_C, BLOCK_HW)
            tl.store(SUMS + nc, s1, mask=cmask)
            tl.store(SUMS + NC + nc, s2, mask=cmask)
        c1 += tl.sum(a * s1)
        c2 += tl.sum(a * s2)
    inv_m = 1.0 / (CG * HW * 1.0)  # a float even when CG = HW = 1 (constexprs)
    c1 = c1 * inv_m
    c2 = c2 * inv_m

    # dx = rstd * (dh*a - c1 - xhat*c2)
    for cb in range(0, CG, BLOCK_C):
        c, cmask, a, bb = _channel_block(cb, n, g, CG, W, B, SCALE, SHIFT, stride_sn, stride_tn, HAS_SCALE,
                                         HAS_SHIFT, BLOCK_C)
        for hb in range(hw_lo, hw_hi, BLOCK_HW):
            hw, mask, xhat, dh = _pixel_tile_dh(X, DY, x_base, dy_base, c, cmask, hb, hw_hi, mean, rstd, a, bb,
                                                stride_xc, stride_xp, stride_dc, stride_dp, BLOCK_HW)
            dx = dx_tile(dh, xhat, a[:, None], rstd, c1, c2)
            dx_offs = dx_base + c[:, None] * stride_gc + hw[None, :] * stride_gp
            tl.store(DX + dx_offs, dx.to(DX.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- launchers


class GroupKernels(NamedTuple):
    """The four per-(sample, group) kernels a launcher runs; a benchmark may pass an older set with the
    same arguments (benchmarks/probes/gn_groups_pre8a0dcf0.py)."""

    stats: Callable
    fwd: Callable
    bwd_reduce: Callable
    bwd: Callable


KERNELS = GroupKernels(_gns_stats_kernel, _gns_fwd_kernel, _gns_bwd_reduce_kernel, _gns_bwd_kernel)


def _plan(x3: torch.Tensor, groups: int, hw_per_split: int | None) -> tuple[int, int]:
    n, c, hw = x3.shape
    if hw_per_split is not None:
        return forced_plan(hw, hw_per_split)
    return split_plan(n * groups, hw, c // groups, x3.device)


def group_norm_silu_fwd_groups(x, weight, bias, scale, shift, groups: int, eps: float, hw_per_split: int | None = None,
                               kernels: GroupKernels = KERNELS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """As `design.group_norm_silu_fwd_triton`: (y, mean, rstd); `hw_per_split` forces the split size
    (tests; None: `launch.split_plan`), `kernels` another set of kernels with these arguments."""
    weight, bias = weight.contiguous(), bias.contiguous()  # no-ops for parameters
    y = torch.empty_like(x)
    x3, y3 = as_n_c_p(x), as_n_c_p(y)
    n, c, hw = x3.shape
    cg = c // groups
    s, chunk = _plan(x3, groups, hw_per_split)
    (scale_t, stride_sn), (shift_t, stride_tn) = modulation(scale, weight), modulation(shift, weight)
    mean = torch.empty((n, groups), device=x.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    part = torch.empty((3, n * groups, s), device=x.device, dtype=torch.float32)
    if s > 1:
        kernels.stats[(n * groups, s)](x3, part, groups, cg, hw, chunk, s, *x3.stride())
    kernels.fwd[(n * groups, s)](
        x3, y3, weight, bias, scale_t, shift_t, mean, rstd, part,
        c, groups, cg, hw, chunk, s, float(eps), stride_sn, stride_tn, *x3.stride(), *y3.stride(),
        HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None, SPLIT=s > 1,
    )  # fmt: skip
    return write_back(y, y3), mean, rstd


def group_norm_silu_bwd_groups(dy, x, weight, bias, scale, shift, mean, rstd, groups: int, eps: float,
                               hw_per_split: int | None = None,
                               kernels: GroupKernels = KERNELS) -> tuple[torch.Tensor, ...]:
    """As `design.group_norm_silu_bwd_triton`: (dx, dweight, dbias, dscale, dshift).

    Whole groups: dx kernel (writes s1, s2) -> parameter kernel. Split groups: s1/s2 partials ->
    parameter kernel (also sums the partials) -> dx kernel.
    """
    weight, bias = weight.contiguous(), bias.contiguous()
    dx, dweight, dbias, dscale, dshift = grad_outputs(x, weight, bias, scale, shift)
    x3, dy3, dx3 = as_n_c_p(x), as_n_c_p(dy), as_n_c_p(dx)
    n, c, hw = x3.shape
    cg = c // groups
    s, chunk = _plan(x3, groups, hw_per_split)
    (scale_t, stride_sn), (shift_t, stride_tn) = modulation(scale, weight), modulation(shift, weight)
    flags = dict(HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None)
    mean, rstd = mean.contiguous(), rstd.contiguous()
    sums = torch.empty((2, n, c), device=x.device, dtype=torch.float32)
    part = torch.empty((2, s, n, c), device=x.device, dtype=torch.float32) if s > 1 else sums

    def param_grads():
        launch_param_grads(part, sums, weight, bias, scale_t, stride_sn, scale is not None, dweight, dbias, dscale,
                           dshift)

    if s > 1:
        kernels.bwd_reduce[(n * groups, s)](
            x3, dy3, weight, bias, scale_t, shift_t, mean, rstd, part, n, c, groups, cg, hw, chunk,
            stride_sn, stride_tn, *x3.stride(), *dy3.stride(), **flags,
        )  # fmt: skip
        param_grads()
    kernels.bwd[(n * groups, s)](
        x3, dy3, dx3, weight, bias, scale_t, shift_t, mean, rstd, sums, n, c, groups, cg, hw, chunk,
        stride_sn, stride_tn, *x3.stride(), *dy3.stride(), *dx3.stride(), SPLIT=s > 1, **flags,
    )  # fmt: skip
    if s == 1:
        param_grads()
    return write_back(dx, dx3), dweight, dbias, dscale, dshift
