"""The parameter gradients of GroupNorm-SiLU from the per-channel backward sums, shared by every design.

Per sample n and channel c, the backward passes leave

    s1[n, c] = sum_p dh[n, c, p]               dh = dy * silu'(u), u = xhat * a + bb
    s2[n, c] = sum_p dh[n, c, p] * xhat[n, c, p]

(as S partial sums over pixel splits, PART (2, S, N, C), when a group is split; S = 1 otherwise).
With a = w * (1 + scale), bb = b * (1 + scale) + shift:

    dshift[n, c] = s1                        dscale[n, c] = w * s2 + b * s1
    dweight[c]   = sum_n (1 + scale) * s2    dbias[c]     = sum_n (1 + scale) * s1

One program per block of BLOCK_C channels (C / BLOCK_C programs in parallel). Inside it the samples
go in tiles of BLOCK_N: each tile is loaded at once (the S splits added in order) and summed over
its samples by a reduction tree, so a program makes cdiv(N, BLOCK_N) * S dependent steps instead of
N * S. The tiles, the split order and the tree are fixed, so the result is bitwise reproducible; no
atomics.
"""
import torch

from ..bodies import tl, triton

BLOCK_C = 32  # channels per program: C / 32 programs
MAX_BLOCK_N = 16  # samples per tile
NUM_WARPS = 2


@triton.jit
def _param_grads_kernel(
    PART,  # channel sums (s1, s2) per split, shape (2, S, N, C) fp32 (PART is SUMS when S == 1)
    SUMS,  # out if SPLIT: (s1, s2) summed over splits, shape (2, N, C) fp32
    W,  # pointer to weight, shape (C,); read only if WRITE_MOD
    B,  # pointer to bias, shape (C,); read only if WRITE_MOD
    SCALE,  # pointer to scale, shape (N, C), strides (stride_sn, 1); read only if HAS_SCALE
    DW,  # out: dweight, shape (C,)
    DB,  # out: dbias, shape (C,)
    DSCALE,  # out if WRITE_MOD: dscale, shape (N, C) contiguous
    DSHIFT,  # out if WRITE_MOD: dshift, shape (N, C) contiguous
    N,  # samples
    C,  # channels
    S,  # splits per group
    stride_sn,
    HAS_SCALE: tl.constexpr,
    SPLIT: tl.constexpr,  # S > 1: write the split-summed s1, s2 to SUMS
    WRITE_MOD: tl.constexpr,  # write dscale and dshift (the slab design writes them in its own pass)
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    if WRITE_MOD:
        w = tl.load(W + c, mask=cmask, other=0.0).to(tl.float32)
        b = tl.load(B + c, mask=cmask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_C], dtype=tl.float32)
    db = tl.zeros([BLOCK_C], dtype=tl.float32)
    NC = N * C
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        mask = (n < N)[:, None] & cmask[None, :]
        offs = n[:, None] * C + c[None, :]
        s1 = tl.zeros([BLOCK_N, BLOCK_C], dtype=tl.float32)
        s2 = tl.zeros([BLOCK_N, BLOCK_C], dtype=tl.float32)
        for s in range(0, S):
            s1 += tl.load(PART + s * NC + offs, mask=mask, other=0.0)
            s2 += tl.load(PART + (S + s) * NC + offs, mask=mask, other=0.0)
        if SPLIT:
            tl.store(SUMS + offs, s1, mask=mask)
            tl.store(SUMS + NC + offs, s2, mask=mask)
        if WRITE_MOD:
            tl.store(DSHIFT + offs, s1.to(DSHIFT.dtype.element_ty), mask=mask)
            tl.store(DSCALE + offs, (w[None, :] * s2 + b[None, :] * s1).to(DSCALE.dtype.element_ty), mask=mask)
        if HAS_SCALE:
            f = 1.0 + tl.load(SCALE + n[:, None] * stride_sn + c[None, :], mask=mask, other=0.0).to(tl.float32)
            s1 = s1 * f
            s2 = s2 * f
        dw += tl.sum(s2, axis=0)
        db += tl.sum(s1, axis=0)
    tl.store(DW + c, dw.to(DW.dtype.element_ty), mask=cmask)
    tl.store(DB + c, db.to(DB.dtype.element_ty), mask=cmask)


def block_n(n: int) -> int:
    return min(MAX_BLOCK_N, triton.next_power_of_2(n))


def grad_outputs(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, scale: torch.Tensor | None,
                 shift: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """Empty dx, dweight, dbias, dscale, dshift for a backward (dscale, dshift (N, C) in the modulation's
    dtype, the weight's when there is none)."""
    n, c = x.shape[:2]
    mod_dtype = lambda t: weight.dtype if t is None else t.dtype
    return (torch.empty_like(x), torch.empty_like(weight), torch.empty_like(bias),
            torch.empty((n, c), device=x.device, dtype=mod_dtype(scale)),
            torch.empty((n, c), device=x.device, dtype=mod_dtype(shift)))


def launch_param_grads(part, sums, weight, bias, scale_t, stride_sn, has_scale: bool, dweight, dbias,
                       dscale=None, dshift=None) -> None:
    """Runs the kernel: `part` (2, S, N, C), or `sums` (2, N, C) itself when S == 1; dscale/dshift
    written when given."""
    n, c = sums.shape[1:]
    s = 1 if part is sums else part.shape[1]
    write_mod = dscale is not None
    _param_grads_kernel[(triton.cdiv(c, BLOCK_C),)](
        part, sums, weight, bias, scale_t, dweight, dbias,
        dscale if write_mod else dweight, dshift if write_mod else dbias, n, c, s, stride_sn,
        HAS_SCALE=has_scale, SPLIT=s > 1, WRITE_MOD=write_mod, BLOCK_N=block_n(n), BLOCK_C=BLOCK_C,
        num_warps=NUM_WARPS,
    )  # fmt: skip
