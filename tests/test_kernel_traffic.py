"""The byte counter (kernels/traffic.py) on kernels whose traffic is known by construction."""
import torch

from hybengine.kernels import traffic
from hybengine.kernels.bodies import tl, triton


@triton.jit
def _copy_kernel(X, Y, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    tl.store(Y + offs, tl.load(X + offs, mask=m), mask=m)


@triton.jit
def _twice_kernel(X, Y, OUT, n, BLOCK: tl.constexpr):
    """Reads x twice (the second read is an L2 hit in the model), writes y, and one float of OUT."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    s = tl.sum(tl.load(X + offs, mask=m, other=0.0), axis=0)
    tl.store(Y + offs, tl.load(X + offs, mask=m) * 2, mask=m)
    tl.store(OUT + tl.program_id(0), s)


def test_copy_counts_one_read_and_one_write():
    n = 1000  # not a multiple of BLOCK: masked lanes must not count
    x, y = torch.randn(n, dtype=torch.float16), torch.empty(n, dtype=torch.float16)
    with traffic.count() as t:
        _copy_kernel[(triton.cdiv(n, 256),)](x, y, n, BLOCK=256)
    assert torch.equal(x, y)
    (launch,) = t.launches
    assert launch.name == "_copy_kernel" and launch.grid == (4, 1, 1)
    assert (launch.load, launch.store, launch.load_small, launch.store_small) == (2 * n, 2 * n, 0, 0)
    assert (launch.dram_load, launch.dram_store) == (2016, 2016)  # 2000 bytes from an aligned start: 63 sectors


def test_reread_is_raw_traffic_but_an_l2_hit_and_small_buffers_apart():
    n = 512
    x, y, out = torch.randn(n), torch.empty(n), torch.empty(4)
    with traffic.count() as t:
        _twice_kernel[(4,)](x, y, out, n, BLOCK=128)
    (launch,) = t.launches
    assert (launch.load, launch.store) == (2 * 4 * n, 4 * n)
    assert (launch.dram_load, launch.dram_store) == (4 * n, 4 * n)
    assert (launch.load_small, launch.store_small, launch.dram_small) == (0, 4 * 4, 32)


def test_reuse_beyond_the_budget_or_across_scaled_launches_goes_to_dram():
    n = 4096  # 16 KB of x and of y; launch 2 rereads x 32 KB of touches after launch 1 read it
    x, y = torch.randn(n), torch.empty(n)
    for budget, scale, dram in ((64 * 1024, 1.0, 0), (16 * 1024, 1.0, 4 * n), (64 * 1024, 4.0, 4 * n)):
        with traffic.count(l2_budget=budget, batch_scale=scale) as t:
            _copy_kernel[(16,)](x, y, n, BLOCK=256)
            _copy_kernel[(16,)](x, y, n, BLOCK=256)
        first, second = t.launches
        assert (first.dram_load, first.dram_store) == (4 * n, 4 * n)
        assert (second.load, second.store) == (4 * n, 4 * n)
        assert (second.dram_load, second.dram_store) == (dram, dram), (budget, scale)
    assert t.totals()["load"] == 8 * n
