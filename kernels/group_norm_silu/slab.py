"""GroupNorm-SiLU by slabs: one persistent launch per pass, each input read once from DRAM.

Same math and contract as the group kernels (formulas in the package docstring). Why: the
group kernels split every real U-Net call (S = 2, N*G = 256 programs for 528 slots on 132 SMs), so
a pass reads x once for the statistics and once more for the output a whole tensor later, from
DRAM: about 8 element-sizes per element fwd+bwd against the 5 of the memory roofline. Here the
reread comes right after the first read, while the data are still in L2.

Work decomposition. A *unit* is GB whole groups of one sample (CB = GB*CG channels over all HW
pixels; GB chosen so a unit holds about UNIT_ELEMS elements); it is cut into K pixel *chunks*
(a chunk of a channels-last unit is P_CHUNK whole pixel rows of CB channels; of an NCHW unit, CB
pixel spans). Three kinds of work items, for unit u and chunk k:

    P1(u, k)  forward: per-channel (mean, m2) of the chunk (tile means and sums of squared
              deviations, Chan-combined over tiles: no per-element divide)  -> PART (2, N, K, C)
              backward: per-channel s1 = sum dh, s2 = sum dh*xhat           -> PART (2, N, K, C)
    F(u)      waits for the K P1(u, .) items, then combines their partials in chunk order:
              forward: mean_c, m2_c over HW; mean_g = sum_c mean_c / CG,
                       m2_g = sum_c m2_c + HW (mean_c - mean_g)^2, rstd = 1/sqrt(m2_g/M + eps)
              backward: s1, s2 per channel -> SUMS (2, N, C), dshift = s1, dscale = w*s2 + b*s1,
                       c1 = sum_{c in g} a*s1 / M, c2 = sum a*s2 / M -> COEF (2, N*G)
    P2(u, k)  waits for F(u), rereads the chunk (an L2 hit): y = silu(xhat*a + bb), or
              dx = rstd * (dh*a - c1 - xhat*c2)

Items are handed out in one global order by an integer ticket counter (atomic_add on TICKET):
    P1(0, .), F(0) | P1(1, .), F(1), P2(0, .) | P1(2, .), F(2), P2(1, .) | ... | P2(U-1, .)
so P2(u) runs about one unit after P1(u) read it: the reuse distance is ~2 units, a few MB, far
below L2, whatever the batch. An item waits only for items with smaller tickets, which programs
already running hold, so the persistent grid cannot deadlock whatever the number of resident
programs. Waiting is an acquire spin on a per-unit integer counter that the producers bump with
release semantics (after a CTA barrier). Every float sum runs in a fixed order: bitwise
deterministic; the ticket only decides which program computes an item, never how.

Under the interpreter programs run one after another: program 0 takes every ticket in order, so
each wait is already satisfied when reached, and the same kernel runs unchanged (no second mode).
"""
from __future__ import annotations

import math

import torch

from ..bodies import tl, triton
from ..layout import as_n_c_p, write_back
from .param_grads import grad_outputs, launch_param_grads
from .registers import budget, programs_per_sm
from .tiles import channel_affine, dh_tile, dx_tile, modulation, silu

UNIT_ELEMS = 1 << 20  # elements per unit at most (unless one group is larger): ~2 units live in L2
ITEM_ELEMS = 1 << 14  # elements per work item (chunk), about
MIN_CHUNK = 256  # pixels per chunk at least: partials stay < 1/32 of an element-size per element
NCHW_CHUNK = 1024  # pixels per chunk of an NCHW unit (each channel's span is contiguous)
DEFAULT_PROGRAMS_PER_SM = 2  # resident programs per SM outside registers.TABLE (no slab variant spilled there)


def slab_config(c: int, hw: int, groups: int, channels_last: bool, on_gpu: bool, unit_elems: int = UNIT_ELEMS,
                item_elems: int = ITEM_ELEMS, min_chunk: int = MIN_CHUNK, nchw_chunk: int = NCHW_CHUNK,
                tile: int | None = None) -> dict:
    """Launch parameters for one call shape: the one table of this design (keyed on C, HW, layout).

    Units, chunks and so the bytes moved do not depend on `tile` (the traffic counter runs with the
    CPU's larger tiles); the keyword arguments exist for tests, which shrink them to reach many
    units, chunks and tiles. Tiles: 2048 elements and 8 warps, channels-last tiles of whole pixel
    rows, NCHW tiles of 2 channels x 1024 pixels (NCHW tiles of 8-16 channels x 256 pixels used 255
    registers and spilled). Resident programs per SM, and with them each kernel's register budget
    (`maxnreg`), come from registers.TABLE, where the real call list's sm_90 compiles do not spill
    (tests/kernel_aot.py --real); the persistent grid is that many programs per SM.
    """
    cg = c // groups
    gb = 1
    for d in range(1, groups + 1):  # largest divisor of G whose unit fits unit_elems
        if groups % d == 0 and d * cg * hw <= unit_elems:
            gb = d
    cb = gb * cg
    if channels_last:  # a chunk: whole pixel rows of the unit's channels
        chunk = max(min_chunk, item_elems // triton.next_power_of_2(cb))
    else:  # a chunk: a span of pixels of each of the unit's channels
        chunk = max(min_chunk, nchw_chunk)
    chunk = min(chunk, triton.next_power_of_2(hw))
    k = math.ceil(hw / chunk)
    if tile is None:  # elements per tile: registers on a GPU, Python steps on the CPU
        tile = 2048 if on_gpu else 8192
    if channels_last:
        block_c = min(triton.next_power_of_2(cb), tile)
        block_p = max(1, min(triton.next_power_of_2(chunk), tile // block_c))
    else:
        block_c = min(2, triton.next_power_of_2(cb))
        block_p = max(1, min(triton.next_power_of_2(chunk), tile // block_c))
    warps = 8 if block_c * block_p >= 2048 else 4
    per_sm = {kind: programs_per_sm(f"_slab_{kind.lower()}_kernel", channels_last, block_c, block_p, warps,
                                    DEFAULT_PROGRAMS_PER_SM) for kind in ("FWD", "BWD")}
    return dict(GB=gb, CB=cb, P_CHUNK=chunk, K=k, U=groups // gb, BLOCK_C=block_c, BLOCK_P=block_p,
                BLOCK_G=triton.next_power_of_2(gb), BLOCK_CG=triton.next_power_of_2(cg),
                num_warps=warps, NUM_STAGES=2 if on_gpu else 1,
                PROGRAMS_FWD=per_sm["FWD"], PROGRAMS_BWD=per_sm["BWD"])


# ----------------------------------------------------------------------------- scheduling


@triton.jit
def _decode(t, K, NU):
    """Ticket t -> (kind, unit, chunk); kind 0: P1, 1: F, 2: P2 (order in the module docstring)."""
    first = K + 1
    v = tl.maximum(t - first, 0)
    j = 1 + v // (2 * K + 1)
    r = v % (2 * K + 1)
    kind = tl.where(t < first, tl.where(t < K, 0, 1),
                    tl.where(j == NU, 2, tl.where(r < K, 0, tl.where(r == K, 1, 2))))
    unit = tl.where(t < first, 0, tl.where(kind == 2, j - 1, j))
    chunk = tl.where(t < first, t, tl.where(j == NU, r, tl.where(r < K, r, r - K - 1)))
    return kind, unit, chunk


@triton.jit
def _wait(FLAG, target):
    """Spin until FLAG >= target (acquire), then make it visible to the whole CTA."""
    seen = tl.atomic_add(FLAG, 0, sem="acquire")
    while seen < target:
        seen = tl.atomic_add(FLAG, 0, sem="acquire")
    tl.debug_barrier()


@triton.jit
def _signal(FLAG):
    """Every thread's stores issued, then FLAG += 1 (release)."""
    tl.debug_barrier()
    tl.atomic_add(FLAG, 1, sem="release")


@triton.jit
def _gather_group(T, n, c_abs, cmask, G, CG):
    """T[n*G + c // CG] per channel, read past L1 (written by another program of this launch)."""
    return tl.load(T + n * G + c_abs // CG, mask=cmask, other=0.0, cache_modifier=".cg")


# ----------------------------------------------------------------------------- forward


@triton.jit
def _fwd_p1(X, PART, n, c0, k, N, C, HW, K, x_base, stride_xc, stride_xp, CB, P_CHUNK,
            BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, NUM_STAGES: tl.constexpr):
    p_lo, p_hi = _chunk_pixels(k, P_CHUNK, HW)
    for cb in range(0, CB, BLOCK_C):
        c = c0 + cb + tl.arange(0, BLOCK_C)
        cmask = c < c0 + CB
        mean = tl.zeros([BLOCK_C], dtype=tl.float32)
        m2 = tl.zeros([BLOCK_C], dtype=tl.float32)
        cnt = tl.zeros([BLOCK_C], dtype=tl.float32)
        for pb in tl.range(p_lo, p_hi, BLOCK_P, num_stages=NUM_STAGES):
            p = pb + tl.arange(0, BLOCK_P)
            mask = (p < p_hi)[:, None] & cmask[None, :]
            x = tl.load(X + x_base + p[:, None] * stride_xp + c[None, :] * stride_xc, mask=mask, other=0.0)
            x = x.to(tl.float32)
            nt = tl.minimum(p_hi - pb, BLOCK_P).to(tl.float32)
            t_mean = tl.sum(x, axis=0) / nt
            d = tl.where(mask, x - t_mean[None, :], 0.0)
            t_m2 = tl.sum(d * d, axis=0)
            n_new = cnt + nt
            delta = t_mean - mean
            mean += delta * (nt / n_new)
            m2 += t_m2 + delta * delta * (cnt * nt / n_new)
            cnt = n_new
        tl.store(PART + (n * K + k) * C + c, mean, mask=cmask)
        tl.store(PART + ((N + n) * K + k) * C + c, m2, mask=cmask)


@triton.jit
def _chunk_pixels(k, P_CHUNK, HW):
    """Chunk k's pixels: (first, one past the last)."""
    p_lo = k * P_CHUNK
    return p_lo, tl.minimum(p_lo + P_CHUNK, HW)


@triton.jit
def _unit_channels(c0, GB, CG, BLOCK_G: tl.constexpr, BLOCK_CG: tl.constexpr):
    """A unit's channels as a [BLOCK_G, BLOCK_CG] tile, one group a row: (group index gi, mask, channel)."""
    gi = tl.arange(0, BLOCK_G)
    ci = tl.arange(0, BLOCK_CG)
    return gi, (gi < GB)[:, None] & (ci < CG)[None, :], c0 + gi[:, None] * CG + ci[None, :]


@triton.jit
def _fwd_finish(PART, MEAN, RSTD, n, c0, j, N, C, G, CG, HW, K, GB, P_CHUNK, eps,
                BLOCK_G: tl.constexpr, BLOCK_CG: tl.constexpr):
    gi, cmask, c = _unit_channels(c0, GB, CG, BLOCK_G, BLOCK_CG)
    mean = tl.zeros([BLOCK_G, BLOCK_CG], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_G, BLOCK_CG], dtype=tl.float32)
    cnt = 0.0
    for s in range(0, K):  # chunk order: deterministic
        ns = tl.minimum(P_CHUNK, HW - s * P_CHUNK).to(tl.float32)
        m_s = tl.load(PART + (n * K + s) * C + c, mask=cmask, other=0.0, cache_modifier=".cg")
        q_s = tl.load(PART + ((N + n) * K + s) * C + c, mask=cmask, other=0.0, cache_modifier=".cg")
        n_new = cnt + ns
        delta = m_s - mean
        mean += delta * (ns / n_new)
        m2 += q_s + delta * delta * (cnt * ns / n_new)
        cnt = n_new
    mean_g = tl.sum(mean, axis=1) / CG  # every channel holds HW values
    d = tl.where(cmask, mean - mean_g[:, None], 0.0)
    m2_g = tl.sum(tl.where(cmask, m2, 0.0) + HW * d * d, axis=1)
    rstd = tl.rsqrt(m2_g / (CG * HW) + eps)
    g = n * G + j * GB + gi
    tl.store(MEAN + g, mean_g, mask=gi < GB)
    tl.store(RSTD + g, rstd, mask=gi < GB)


@triton.jit
def _fwd_p2(X, Y, W, B, SCALE, SHIFT, MEAN, RSTD, n, c0, k, G, CG, HW, x_base, y_base,
            stride_xc, stride_xp, stride_yc, stride_yp, stride_sn, stride_tn, CB, P_CHUNK,
            HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr,
            BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, NUM_STAGES: tl.constexpr):
    p_lo, p_hi = _chunk_pixels(k, P_CHUNK, HW)
    for cb in range(0, CB, BLOCK_C):
        c = c0 + cb + tl.arange(0, BLOCK_C)
        cmask = c < c0 + CB
        a, bb = channel_affine(W, B, SCALE, SHIFT, n, c, cmask, stride_sn, stride_tn, HAS_SCALE, HAS_SHIFT)
        mean = _gather_group(MEAN, n, c, cmask, G, CG)
        rstd = _gather_group(RSTD, n, c, cmask, G, CG)
        a2 = a * rstd  # h = x*a2 + b2
        b2 = bb - mean * a2
        for pb in tl.range(p_lo, p_hi, BLOCK_P, num_stages=NUM_STAGES):
            p = pb + tl.arange(0, BLOCK_P)
            mask = (p < p_hi)[:, None] & cmask[None, :]
            x = tl.load(X + x_base + p[:, None] * stride_xp + c[None, :] * stride_xc, mask=mask, other=0.0)
            h = x.to(tl.float32) * a2[None, :] + b2[None, :]
            y = silu(h)
            tl.store(Y + y_base + p[:, None] * stride_yp + c[None, :] * stride_yc, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _slab_fwd_kernel(
    X,  # x, shape (N, C, HW), strides (stride_xn, stride_xc, stride_xp)
    Y,  # out: y, same shape, strides (stride_yn, stride_yc, stride_yp)
    W,  # weight (C,)
    B,  # bias (C,)
    SCALE,  # (N, C), strides (stride_sn, 1); read only if HAS_SCALE
    SHIFT,  # (N, C), strides (stride_tn, 1); read only if HAS_SHIFT
    MEAN,  # out: (N*G,) fp32
    RSTD,  # out: (N*G,) fp32
    PART,  # scratch: per-chunk channel (mean, m2), shape (2, N, K, C) fp32
    SYNC,  # int32 zeros: [ticket, P1 done per unit (NU), F done per unit (NU)]
    N, C, G, CG, HW, eps,
    GB, CB, U, K, P_CHUNK,  # slab_config
    stride_sn, stride_tn, stride_xn, stride_xc, stride_xp, stride_yn, stride_yc, stride_yp,
    HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_CG: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    """Persistent: items P1 / F / P2 by ticket (module docstring). Grid: (programs,)."""
    eps = tl.cast(eps, tl.float32)
    NU = N * U
    total = NU * (2 * K + 1)
    t = tl.atomic_add(SYNC, 1)
    while t < total:
        kind, unit, k = _decode(t, K, NU)
        n, j = unit // U, unit % U  # sample, unit of the sample
        c0 = j * CB
        x_base = n.to(tl.int64) * stride_xn
        if kind == 0:
            _fwd_p1(X, PART, n, c0, k, N, C, HW, K, x_base, stride_xc, stride_xp, CB, P_CHUNK,
                    BLOCK_C, BLOCK_P, NUM_STAGES)
            _signal(SYNC + 1 + unit)
        elif kind == 1:
            _wait(SYNC + 1 + unit, K)
            _fwd_finish(PART, MEAN, RSTD, n, c0, j, N, C, G, CG, HW, K, GB, P_CHUNK, eps, BLOCK_G, BLOCK_CG)
            _signal(SYNC + 1 + NU + unit)
        else:
            _wait(SYNC + 1 + NU + unit, 1)
            y_base = n.to(tl.int64) * stride_yn
            _fwd_p2(X, Y, W, B, SCALE, SHIFT, MEAN, RSTD, n, c0, k, G, CG, HW, x_base, y_base,
                    stride_xc, stride_xp, stride_yc, stride_yp, stride_sn, stride_tn, CB, P_CHUNK,
                    HAS_SCALE, HAS_SHIFT, BLOCK_C, BLOCK_P, NUM_STAGES)
        t = tl.atomic_add(SYNC, 1)


# ----------------------------------------------------------------------------- backward


@triton.jit
def _bwd_channels(W, B, SCALE, SHIFT, MEAN, RSTD, n, c_lo, c_hi, G, CG, stride_sn, stride_tn,
                  HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, BLOCK_C: tl.constexpr):
    """Channels c_lo .. c_lo+BLOCK_C-1 (< c_hi) of sample n: (c, cmask, a, bb, mean, rstd), per channel."""
    c = c_lo + tl.arange(0, BLOCK_C)
    cmask = c < c_hi
    a, bb = channel_affine(W, B, SCALE, SHIFT, n, c, cmask, stride_sn, stride_tn, HAS_SCALE, HAS_SHIFT)
    mean = tl.load(MEAN + n * G + c // CG, mask=cmask, other=0.0)
    rstd = tl.load(RSTD + n * G + c // CG, mask=cmask, other=0.0)
    return c, cmask, a, bb, mean, rstd


@triton.jit
def _bwd_tile(X, DY, x_base, d_base, pb, p_hi, c, cmask, mean, rstd, a, bb, stride_xc, stride_xp, stride_dc,
              stride_dp, BLOCK_P: tl.constexpr):
    """Pixel rows pb .. pb+BLOCK_P-1 (< p_hi) of the channels c: (p, mask, xhat, dh)."""
    p = pb + tl.arange(0, BLOCK_P)
    mask = (p < p_hi)[:, None] & cmask[None, :]
    xhat, dh = dh_tile(X, DY, x_base + p[:, None] * stride_xp + c[None, :] * stride_xc,
                       d_base + p[:, None] * stride_dp + c[None, :] * stride_dc, mask,
                       mean[None, :], rstd[None, :], a[None, :], bb[None, :])
    return p, mask, xhat, dh


@triton.jit
def _bwd_p1(X, DY, W, B, SCALE, SHIFT, MEAN, RSTD, PART, n, c0, k, N, C, G, CG, HW, K, x_base, d_base,
            stride_xc, stride_xp, stride_dc, stride_dp, stride_sn, stride_tn, CB, P_CHUNK,
            HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr,
            BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, NUM_STAGES: tl.constexpr):
    p_lo, p_hi = _chunk_pixels(k, P_CHUNK, HW)
    for cb in range(0, CB, BLOCK_C):
        c, cmask, a, bb, mean, rstd = _bwd_channels(W, B, SCALE, SHIFT, MEAN, RSTD, n, c0 + cb, c0 + CB, G, CG,
                                                    stride_sn, stride_tn, HAS_SCALE, HAS_SHIFT, BLOCK_C)
        acc1 = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
        acc2 = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
        for pb in tl.range(p_lo, p_hi, BLOCK_P, num_stages=NUM_STAGES):
            _, _, xhat, dh = _bwd_tile(X, DY, x_base, d_base, pb, p_hi, c, cmask, mean, rstd, a, bb, stride_xc,
                                       stride_xp, stride_dc, stride_dp, BLOCK_P)
            acc1 += dh
            acc2 += dh * xhat
        tl.store(PART + (n * K + k) * C + c, tl.sum(acc1, axis=0), mask=cmask)
        tl.store(PART + ((N + n) * K + k) * C + c, tl.sum(acc2, axis=0), mask=cmask)


@triton.jit
def _bwd_finish(PART, W, B, SCALE, SHIFT, SUMS, COEF, DSCALE, DSHIFT, n, c0, j, N, C, G, CG, HW, K, GB,
                stride_sn, stride_tn, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr,
                BLOCK_G: tl.constexpr, BLOCK_CG: tl.constexpr):
    gi, cmask, c = _unit_channels(c0, GB, CG, BLOCK_G, BLOCK_CG)
    s1 = tl.zeros([BLOCK_G, BLOCK_CG], dtype=tl.float32)
    s2 = tl.zeros([BLOCK_G, BLOCK_CG], dtype=tl.float32)
    for s in range(0, K):  # chunk order: deterministic
        s1 += tl.load(PART + (n * K + s) * C + c, mask=cmask, other=0.0, cache_modifier=".cg")
        s2 += tl.load(PART + ((N + n) * K + s) * C + c, mask=cmask, other=0.0, cache_modifier=".cg")
    nc = n * C + c
    tl.store(SUMS + nc, s1, mask=cmask)
    tl.store(SUMS + N * C + nc, s2, mask=cmask)
    w = tl.load(W + c, mask=cmask, other=0.0).to(tl.float32)
    b = tl.load(B + c, mask=cmask, other=0.0).to(tl.float32)
    tl.store(DSHIFT + nc, s1.to(DSHIFT.dtype.element_ty), mask=cmask)
    tl.store(DSCALE + nc, (w * s2 + b * s1).to(DSCALE.dtype.element_ty), mask=cmask)
    a, bb = channel_affine(W, B, SCALE, SHIFT, n, c, cmask, stride_sn, stride_tn, HAS_SCALE, HAS_SHIFT)
    m = (CG * HW).to(tl.float32)
    g = n * G + j * GB + gi
    tl.store(COEF + g, tl.sum(a * s1, axis=1) / m, mask=gi < GB)
    tl.store(COEF + N * G + g, tl.sum(a * s2, axis=1) / m, mask=gi < GB)


@triton.jit
def _bwd_p2(X, DY, DX, W, B, SCALE, SHIFT, MEAN, RSTD, COEF, n, c0, k, N, G, CG, HW, x_base, d_base, g_base,
            stride_xc, stride_xp, stride_dc, stride_dp, stride_gc, stride_gp, stride_sn, stride_tn, CB, P_CHUNK,
            HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
            NUM_STAGES: tl.constexpr):
    p_lo, p_hi = _chunk_pixels(k, P_CHUNK, HW)
    for cb in range(0, CB, BLOCK_C):
        c, cmask, a, bb, mean, rstd = _bwd_channels(W, B, SCALE, SHIFT, MEAN, RSTD, n, c0 + cb, c0 + CB, G, CG,
                                                    stride_sn, stride_tn, HAS_SCALE, HAS_SHIFT, BLOCK_C)
        c1 = _gather_group(COEF, n, c, cmask, G, CG)
        c2 = _gather_group(COEF + N * G, n, c, cmask, G, CG)
        for pb in tl.range(p_lo, p_hi, BLOCK_P, num_stages=NUM_STAGES):
            p, mask, xhat, dh = _bwd_tile(X, DY, x_base, d_base, pb, p_hi, c, cmask, mean, rstd, a, bb, stride_xc,
                                          stride_xp, stride_dc, stride_dp, BLOCK_P)
            dx = dx_tile(dh, xhat, a[None, :], rstd[None, :], c1[None, :], c2[None, :])
            tl.store(DX + g_base + p[:, None] * stride_gp + c[None, :] * stride_gc, dx.to(DX.dtype.element_ty),
                     mask=mask)


@triton.jit
def _slab_bwd_kernel(
    X,  # x, shape (N, C, HW), strides (stride_xn, stride_xc, stride_xp)
    DY,  # dy, same shape, strides (stride_dn, stride_dc, stride_dp)
    DX,  # out: dx, same shape, strides (stride_gn, stride_gc, stride_gp)
    W, B, SCALE, SHIFT,  # as in the forward
    MEAN, RSTD,  # (N*G,) fp32 from the forward
    PART,  # scratch: per-chunk channel (s1, s2), shape (2, N, K, C) fp32
    SUMS,  # out: (s1, s2), shape (2, N, C) fp32 (for the parameter gradients)
    COEF,  # out: (c1, c2), shape (2, N*G) fp32
    DSCALE, DSHIFT,  # out: (N, C)
    SYNC,  # int32 zeros: [ticket, P1 done per unit (NU), F done per unit (NU)]
    N, C, G, CG, HW,
    GB, CB, U, K, P_CHUNK,  # slab_config
    stride_sn, stride_tn, stride_xn, stride_xc, stride_xp, stride_dn, stride_dc, stride_dp,
    stride_gn, stride_gc, stride_gp,
    HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_CG: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    """Persistent: items P1 / F / P2 by ticket (module docstring). Grid: (programs,)."""
    NU = N * U
    total = NU * (2 * K + 1)
    t = tl.atomic_add(SYNC, 1)
    while t < total:
        kind, unit, k = _decode(t, K, NU)
        n = unit // U
        j = unit % U
        c0 = j * CB
        x_base = n.to(tl.int64) * stride_xn
        d_base = n.to(tl.int64) * stride_dn
        if kind == 0:
            _bwd_p1(X, DY, W, B, SCALE, SHIFT, MEAN, RSTD, PART, n, c0, k, N, C, G, CG, HW, K, x_base, d_base,
                    stride_xc, stride_xp, stride_dc, stride_dp, stride_sn, stride_tn, CB, P_CHUNK,
                    HAS_SCALE, HAS_SHIFT, BLOCK_C, BLOCK_P, NUM_STAGES)
            _signal(SYNC + 1 + unit)
        elif kind == 1:
            _wait(SYNC + 1 + unit, K)
            _bwd_finish(PART, W, B, SCALE, SHIFT, SUMS, COEF, DSCALE, DSHIFT, n, c0, j, N, C, G, CG, HW, K, GB,
                        stride_sn, stride_tn, HAS_SCALE, HAS_SHIFT, BLOCK_G, BLOCK_CG)
            _signal(SYNC + 1 + NU + unit)
        else:
            _wait(SYNC + 1 + NU + unit, 1)
            g_base = n.to(tl.int64) * stride_gn
            _bwd_p2(X, DY, DX, W, B, SCALE, SHIFT, MEAN, RSTD, COEF, n, c0, k, N, G, CG, HW, x_base, d_base, g_base,
                    stride_xc, stride_xp, stride_dc, stride_dp, stride_gc, stride_gp, stride_sn, stride_tn,
                    CB, P_CHUNK, HAS_SCALE, HAS_SHIFT, BLOCK_C, BLOCK_P, NUM_STAGES)
        t = tl.atomic_add(SYNC, 1)


# ----------------------------------------------------------------------------- launchers


def _programs(total: int, device: torch.device, sms: int | None, per_sm: int) -> int:
    if device.type != "cuda":
        return min(total, 2)  # the interpreter runs programs in turn: program 0 takes every ticket
    sms = sms or torch.cuda.get_device_properties(device).multi_processor_count
    return min(total, per_sm * sms)


def _launch_meta(cfg: dict, kind: str) -> dict:
    """Compile-time launch parameters of the "FWD" or "BWD" kernel, its register budget included."""
    meta = {k: cfg[k] for k in ("BLOCK_C", "BLOCK_P", "BLOCK_G", "BLOCK_CG", "NUM_STAGES", "num_warps")}
    return {**meta, "maxnreg": budget(cfg[f"PROGRAMS_{kind}"], cfg["num_warps"])}


def _config(x3: torch.Tensor, groups: int, config: dict | None) -> dict:
    n, c, hw = x3.shape
    return config or slab_config(c, hw, groups, x3.stride(1) == 1, x3.device.type == "cuda")


def group_norm_silu_fwd_slab(x, weight, bias, scale, shift, groups: int, eps: float, sms: int | None = None,
                             config: dict | None = None):
    """As `group_norm_silu_fwd_triton`: (y, mean, rstd). `sms`: grid for that many SMs (counter runs);
    `config`: a `slab_config` result to use instead of the default one (tests)."""
    weight, bias = weight.contiguous(), bias.contiguous()
    y = torch.empty_like(x)
    x3, y3 = as_n_c_p(x), as_n_c_p(y)
    n, c, hw = x3.shape
    cfg = _config(x3, groups, config)
    (scale_t, stride_sn), (shift_t, stride_tn) = modulation(scale, weight), modulation(shift, weight)
    mean = torch.empty((n, groups), device=x.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    part = torch.empty((2, n, cfg["K"], c), device=x.device, dtype=torch.float32)
    nu = n * cfg["U"]
    sync = torch.zeros(1 + 2 * nu, device=x.device, dtype=torch.int32)
    grid = (_programs(nu * (2 * cfg["K"] + 1), x.device, sms, cfg["PROGRAMS_FWD"]),)
    _slab_fwd_kernel[grid](
        x3, y3, weight, bias, scale_t, shift_t, mean, rstd, part, sync,
        n, c, groups, c // groups, hw, float(eps), cfg["GB"], cfg["CB"], cfg["U"], cfg["K"], cfg["P_CHUNK"],
        stride_sn, stride_tn, *x3.stride(), *y3.stride(),
        HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None, **_launch_meta(cfg, "FWD"),
    )  # fmt: skip
    return write_back(y, y3), mean, rstd


def group_norm_silu_bwd_slab(dy, x, weight, bias, scale, shift, mean, rstd, groups: int, eps: float,
                             sms: int | None = None, config: dict | None = None):
    """As `group_norm_silu_bwd_triton`: (dx, dweight, dbias, dscale, dshift)."""
    weight, bias = weight.contiguous(), bias.contiguous()
    dx, dweight, dbias, dscale, dshift = grad_outputs(x, weight, bias, scale, shift)
    x3, dy3, dx3 = as_n_c_p(x), as_n_c_p(dy), as_n_c_p(dx)
    n, c, hw = x3.shape
    cfg = _config(x3, groups, config)
    (scale_t, stride_sn), (shift_t, stride_tn) = modulation(scale, weight), modulation(shift, weight)
    mean, rstd = mean.contiguous(), rstd.contiguous()
    part = torch.empty((2, n, cfg["K"], c), device=x.device, dtype=torch.float32)
    sums = torch.empty((2, n, c), device=x.device, dtype=torch.float32)
    coef = torch.empty((2, n * groups), device=x.device, dtype=torch.float32)
    nu = n * cfg["U"]
    sync = torch.zeros(1 + 2 * nu, device=x.device, dtype=torch.int32)
    grid = (_programs(nu * (2 * cfg["K"] + 1), x.device, sms, cfg["PROGRAMS_BWD"]),)
    flags = dict(HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None)
    _slab_bwd_kernel[grid](
        x3, dy3, dx3, weight, bias, scale_t, shift_t, mean, rstd, part, sums, coef, dscale, dshift, sync,
        n, c, groups, c // groups, hw, cfg["GB"], cfg["CB"], cfg["U"], cfg["K"], cfg["P_CHUNK"],
        stride_sn, stride_tn, *x3.stride(), *dy3.stride(), *dx3.stride(), **flags, **_launch_meta(cfg, "BWD"),
    )  # fmt: skip
    launch_param_grads(sums, sums, weight, bias, scale_t, stride_sn, scale is not None, dweight, dbias)
    return write_back(dx, dx3), dweight, dbias, dscale, dshift
