"""The slab design of GroupNorm-SiLU (kernels/group_norm_silu/slab.py) against a float64 reference.

Tiny shapes under the interpreter, with shrunken launch parameters (`slab_config`'s keywords) so
that units hold several groups, items several chunks, chunks several tiles, and the last chunk and
tile are partial: every scheduling path of the persistent kernels runs. Chunks and tiles are as
large as that allows (interpreter time grows with their number).
"""
import pytest
import torch
from kernel_helpers import check_group_norm_silu, gn_inputs

from hybengine import ops
from hybengine.config import KernelConfig
from hybengine.kernels import bodies, traffic
from hybengine.kernels.group_norm_silu import slab

pytestmark = [
    pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning"),
    pytest.mark.skipif(bodies.select("group_norm_silu", "cpu") != "triton-interpreter",
                       reason="Triton interpreter not active"),
]

# (n, c, h, w, groups): units of 2 groups, 2 chunks of 32 pixels (last one 31), odd channels per group
SHAPES = {"multi_unit": (2, 16, 7, 9, 4), "odd": (2, 6, 5, 7, 3), "one_group": (1, 5, 7, 9, 1)}


def tiny_config(x, groups, item_elems=256, chunk=32, tile=64):
    n, c, h, w = x.shape
    return slab.slab_config(c, h * w, groups, x.is_contiguous(memory_format=torch.channels_last) and
                            not x.is_contiguous(), False, unit_elems=600, item_elems=item_elems, min_chunk=8,
                            nchw_chunk=chunk, tile=tile)


def slab_op(config_fn=tiny_config):
    """group_norm_silu's signature on the slab launchers (autograd through their explicit backward)."""

    class _Slab(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight, bias, scale, shift, groups, eps):
            cfg = config_fn(x, groups)
            y, mean, rstd = slab.group_norm_silu_fwd_slab(x, weight, bias, scale, shift, groups, eps, config=cfg)
            ctx.save_for_backward(x, weight, bias, scale, shift, mean, rstd)
            ctx.groups, ctx.eps, ctx.cfg = groups, eps, cfg
            return y

        @staticmethod
        def backward(ctx, dy):
            x, weight, bias, scale, shift, mean, rstd = ctx.saved_tensors
            dx, dw, db, ds, dt = slab.group_norm_silu_bwd_slab(dy, x, weight, bias, scale, shift, mean, rstd,
                                                               ctx.groups, ctx.eps, config=ctx.cfg)
            return dx, dw, db, ds if scale is not None else None, dt if shift is not None else None, None, None

    return lambda x, w, b, groups, eps, s=None, t=None: _Slab.apply(x, w, b, s, t, groups, eps)


def test_tiny_config_reaches_every_path():
    for cl in (False, True):
        cfg = slab.slab_config(16, 63, 4, cl, False, unit_elems=600, item_elems=256, min_chunk=8, nchw_chunk=32,
                               tile=64)
        assert cfg["GB"] == 2 and cfg["K"] == 2 and cfg["P_CHUNK"] == 32
        assert (cfg["BLOCK_P"] < cfg["P_CHUNK"]) if cl else (cfg["BLOCK_C"] < cfg["CB"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_matches_reference(channels_last, dtype):
    n, c, h, w, g = SHAPES["multi_unit"]
    check_group_norm_silu(gn_inputs(n, c, h, w, channels_last=channels_last), g, dtype, fn=slab_op())


@pytest.mark.parametrize("shape,channels_last,scale,shift", [("odd", True, False, True), ("odd", False, True, False),
                                                             ("one_group", True, False, False)])
def test_odd_sizes_and_modulation_variants(shape, channels_last, scale, shift):
    n, c, h, w, g = SHAPES[shape]
    check_group_norm_silu(gn_inputs(n, c, h, w, scale=scale, shift=shift, channels_last=channels_last), g,
                          torch.float32, fn=slab_op())


def test_default_config_matches_reference():
    check_group_norm_silu(gn_inputs(2, 16, 7, 9, channels_last=True), 4, torch.float32,
                          fn=slab_op(lambda x, g: None))


def test_statistics_are_fp32_and_stable():
    """Mean 1e3 with unit spread, over 2 chunks and 2 groups per unit."""
    g = torch.Generator().manual_seed(3)
    x = 1000 + torch.randn(1, 16, 7, 9, generator=g, dtype=torch.float64)
    _, mean, rstd = slab.group_norm_silu_fwd_slab(x.float(), torch.ones(16), torch.zeros(16), None, None, 4, 1e-5,
                                                  config=tiny_config(x, 4))
    xg = x.view(1, 4, -1)
    torch.testing.assert_close(mean.double(), xg.mean(-1), rtol=1e-6, atol=0)
    torch.testing.assert_close(rstd.double(), (xg.var(-1, correction=0) + 1e-5).rsqrt(), rtol=1e-4, atol=0)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_bitwise_deterministic(channels_last):
    x, w, b, s, t, dy = [v.float() for v in gn_inputs(2, 16, 7, 9, channels_last=channels_last)]
    cfg = tiny_config(x, 4)

    def run():
        y, mean, rstd = slab.group_norm_silu_fwd_slab(x, w, b, s, t, 4, 1e-5, config=cfg)
        return (y, mean, rstd, *slab.group_norm_silu_bwd_slab(dy, x, w, b, s, t, mean, rstd, 4, 1e-5, config=cfg))

    for a, b_ in zip(run(), run(), strict=True):
        assert torch.equal(a, b_)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_reads_each_input_once_per_pass_from_dram(channels_last):
    """The counter on the slab launches: raw traffic is 3E fwd (x twice, y) and 5E bwd (x, dy twice,
    dx); the L2 model sees the rereads hit, leaving 2E + 3E from DRAM."""
    x, w, b, s, t, dy = [v.half() for v in gn_inputs(2, 16, 16, 16, channels_last=channels_last)]
    cfg = tiny_config(x, 4, item_elems=512, chunk=128, tile=None)  # 8 units of 2 chunks; bytes do not depend on tiles
    assert cfg["U"] == 4 and cfg["K"] == 2
    unit = x.numel() * x.element_size()
    with traffic.count(big_numel=x.numel()) as tf:
        _, mean, rstd = slab.group_norm_silu_fwd_slab(x, w.float(), b.float(), s, t, 4, 1e-5, config=cfg)
    with traffic.count(big_numel=x.numel()) as tb:
        slab.group_norm_silu_bwd_slab(dy, x, w.float(), b.float(), s, t, mean, rstd, 4, 1e-5, config=cfg)
    f, bw = tf.totals(), tb.totals()
    assert (f["load"] + f["store"]) / unit == 3 and (bw["load"] + bw["store"]) / unit == 5
    assert (f["dram_load"] + f["dram_store"]) / unit == 2 and (bw["dram_load"] + bw["dram_store"]) / unit == 3
    assert [lz.name for lz in tf.launches] == ["_slab_fwd_kernel"]


def test_op_takes_the_slab_kernels_and_passes_opcheck(monkeypatch):
    calls = []
    fwd = slab.group_norm_silu_fwd_slab
    monkeypatch.setattr(slab, "group_norm_silu_fwd_slab", lambda *a, **k: calls.append(1) or fwd(*a, **k))
    x, weight, bias, s, t, _ = [v.float() for v in gn_inputs(2, 4, 3, 5)]
    x.requires_grad_(), weight.requires_grad_(), s.requires_grad_()
    slab_ops = ops.resolve_ops(KernelConfig(group_norm_silu_channels_last="slab"), "cuda")
    slab_ops.group_norm_silu(x, weight, bias, 2, 1e-5, s, t)  # resolve_ops binds the config's design
    assert calls, "the op reached the slab launcher"
    op = torch.ops.hybengine.group_norm_silu_fwd.default
    torch.library.opcheck(op, (x, weight, bias, s, t, 2, 1e-5, "slab"))
    x_cl = x.detach().contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(op, (x_cl, weight, bias, None, None, 2, 1e-5, "slab"))
