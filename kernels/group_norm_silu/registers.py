"""Register budgets (ptxas `.maxnreg`) of the GroupNorm-SiLU Triton kernels on sm_90.

Left to itself, ptxas aims at an occupancy and spills to reach it: at the real call list's shapes it
spilled 8-84 bytes in 21 slab variants and in several group-kernel variants (tests/kernel_aot.py
--real). Given a budget, it allocates within it; at the budgets below none of those variants
spills. A budget is an occupancy step, the most registers per thread that still lets
`programs_per_sm` programs of `num_warps` warps share an SM's 64 K registers:

    budget(k, warps) = 65536 / (k * 32 * warps), rounded down to a multiple of 8, at most 255
    (8 warps: 4 programs 64, 3 programs 80, 2 programs 128, 1 program 255)

TABLE holds, per kernel and tiling (layout, the two block sizes, warps) of the real call list, the
most programs per SM whose budget compiles every variant of that tiling (dtype bf16, with and without
modulation, whole and split groups) without a spill, as found by
`python tests/kernel_aot.py --real --tune-registers` (triton 3.6's ptxas, sm_90a); the AOT test
checks it. Tilings outside the table: `default` (the slab launchers pass 2 programs per SM, where no
slab variant spilled; the group kernels None, ptxas's own choice).
"""
from __future__ import annotations

REGISTERS_PER_SM = 65536

# (kernel, "nhwc" | "nchw", block a, block b, num_warps) -> programs per SM; block a, b: the slab
# kernels' BLOCK_C, BLOCK_P, the group kernels' BLOCK_C, BLOCK_HW
TABLE: dict[tuple[str, str, int, int, int], int] = {
    ('_gns_bwd_kernel', 'nchw', 1, 4096, 8): 4,
    ('_gns_bwd_kernel', 'nchw', 2, 2048, 8): 4,
    ('_gns_bwd_kernel', 'nchw', 8, 512, 8): 2,
    ('_gns_bwd_kernel', 'nchw', 32, 128, 8): 1,
    ('_gns_bwd_kernel', 'nhwc', 16, 256, 8): 4,
    ('_gns_bwd_kernel', 'nhwc', 32, 128, 8): 4,
    ('_gns_bwd_kernel', 'nhwc', 64, 64, 8): 4,
    ('_gns_bwd_kernel', 'nhwc', 128, 32, 8): 4,
    ('_gns_bwd_reduce_kernel', 'nchw', 1, 4096, 8): 3,
    ('_gns_bwd_reduce_kernel', 'nchw', 2, 2048, 8): 3,
    ('_gns_bwd_reduce_kernel', 'nchw', 8, 512, 8): 2,
    ('_gns_bwd_reduce_kernel', 'nchw', 32, 128, 8): 1,
    ('_gns_bwd_reduce_kernel', 'nhwc', 16, 256, 8): 2,
    ('_gns_bwd_reduce_kernel', 'nhwc', 32, 128, 8): 2,
    ('_gns_bwd_reduce_kernel', 'nhwc', 64, 64, 8): 2,
    ('_gns_bwd_reduce_kernel', 'nhwc', 128, 32, 8): 2,
    ('_gns_fwd_kernel', 'nchw', 1, 4096, 8): 4,
    ('_gns_fwd_kernel', 'nchw', 2, 2048, 8): 4,
    ('_gns_fwd_kernel', 'nchw', 8, 512, 8): 4,
    ('_gns_fwd_kernel', 'nchw', 32, 128, 8): 1,
    ('_gns_fwd_kernel', 'nhwc', 16, 256, 8): 3,
    ('_gns_fwd_kernel', 'nhwc', 32, 128, 8): 3,
    ('_gns_fwd_kernel', 'nhwc', 64, 64, 8): 3,
    ('_gns_fwd_kernel', 'nhwc', 128, 32, 8): 3,
    ('_gns_stats_kernel', 'nchw', 1, 4096, 8): 3,
    ('_gns_stats_kernel', 'nchw', 2, 2048, 8): 3,
    ('_gns_stats_kernel', 'nchw', 8, 512, 8): 3,
    ('_gns_stats_kernel', 'nchw', 32, 128, 8): 1,
    ('_gns_stats_kernel', 'nhwc', 16, 256, 8): 2,
    ('_gns_stats_kernel', 'nhwc', 32, 128, 8): 1,
    ('_gns_stats_kernel', 'nhwc', 64, 64, 8): 1,
    ('_gns_stats_kernel', 'nhwc', 128, 32, 8): 2,
    ('_slab_bwd_kernel', 'nchw', 2, 256, 4): 4,
    ('_slab_bwd_kernel', 'nchw', 2, 1024, 8): 2,
    ('_slab_bwd_kernel', 'nhwc', 64, 32, 8): 3,
    ('_slab_bwd_kernel', 'nhwc', 128, 16, 8): 3,
    ('_slab_bwd_kernel', 'nhwc', 256, 8, 8): 4,
    ('_slab_bwd_kernel', 'nhwc', 512, 4, 8): 3,
    ('_slab_bwd_kernel', 'nhwc', 1024, 2, 8): 3,
    ('_slab_fwd_kernel', 'nchw', 2, 256, 4): 4,
    ('_slab_fwd_kernel', 'nchw', 2, 1024, 8): 3,
    ('_slab_fwd_kernel', 'nhwc', 64, 32, 8): 3,
    ('_slab_fwd_kernel', 'nhwc', 128, 16, 8): 4,
    ('_slab_fwd_kernel', 'nhwc', 256, 8, 8): 4,
    ('_slab_fwd_kernel', 'nhwc', 512, 4, 8): 3,
    ('_slab_fwd_kernel', 'nhwc', 1024, 2, 8): 3,
}


def budget(programs_per_sm: int, num_warps: int) -> int:
    """Registers per thread that let `programs_per_sm` programs of `num_warps` warps fit on an SM."""
    return min(255, REGISTERS_PER_SM // (programs_per_sm * 32 * num_warps) // 8 * 8)


def programs_per_sm(kernel: str, channels_last: bool, block_a: int, block_b: int, num_warps: int,
                    default: int | None = None) -> int | None:
    """TABLE's entry for this kernel and tiling, else `default`."""
    return TABLE.get((kernel, "nhwc" if channels_last else "nchw", block_a, block_b, num_warps), default)


def maxnreg(kernel: str, channels_last: bool, block_a: int, block_b: int, num_warps: int,
            default: int | None = None) -> int | None:
    """The `maxnreg` launch option for this kernel and tiling (None: ptxas chooses)."""
    k = programs_per_sm(kernel, channels_last, block_a, block_b, num_warps, default)
    return None if k is None else budget(k, num_warps)
