"""The channels-last rows kernels of GroupNorm-SiLU (kernels/group_norm_silu/rows.py) against the
float64 reference, under the Triton interpreter: every output and gradient, split chunks,
statistics of shifted data, determinism, and which inputs take the path."""
import pytest
import torch
from kernel_helpers import (
    check_group_norm_silu,
    check_split_vs_whole,
    gn_inputs,
)

from hybengine import ops
from hybengine.config import KernelConfig
from hybengine.kernels import bodies
from hybengine.kernels.group_norm_silu import rows
from hybengine.kernels.group_norm_silu.design import choose_design

pytestmark = [
    pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning"),
    pytest.mark.skipif(bodies.select("group_norm_silu", "cpu") != "triton-interpreter",
                       reason="Triton interpreter not active"),
]

# (n, c, h, w, groups): odd sizes, one group, one channel per group, C not a power of two and over
# the vector width, a shape the launch plan splits into several chunks per sample
SHAPES = {
    "odd": (2, 6, 7, 9, 3),
    "one_group": (1, 5, 7, 9, 1),
    "many_groups": (1, 12, 7, 9, 12),
    "wide_channels": (2, 40, 9, 7, 5),
    "split_by_plan": (1, 2, 16, 16, 1),
}


@pytest.fixture
def rows_selected(monkeypatch):
    """Select the rows kernels and count the calls that reach them."""
    calls = {"fwd": 0, "bwd": 0}
    fwd, bwd = rows.group_norm_silu_fwd_rows, rows.group_norm_silu_bwd_rows

    def count(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(rows, "group_norm_silu_fwd_rows", count("fwd", fwd))
    monkeypatch.setattr(rows, "group_norm_silu_bwd_rows", count("bwd", bwd))
    yield calls


def rows_op():
    """The GroupNorm-SiLU a run configured with the rows design resolves to for CUDA."""
    return ops.resolve_ops(KernelConfig(group_norm_silu_channels_last="rows"), "cuda").group_norm_silu


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_matches_reference(rows_selected, shape, dtype):
    n, c, h, w, g = SHAPES[shape]
    check_group_norm_silu(gn_inputs(n, c, h, w, channels_last=True), g, dtype, rows_op())
    assert rows_selected == {"fwd": 1, "bwd": 1}, "the channels-last op took the rows kernels"


def test_split_shape_is_split():
    n, c, h, w, _ = SHAPES["split_by_plan"]
    x3 = torch.empty(n, h * w, c).transpose(1, 2)
    assert rows._plan(x3, None)[0] > 1


def test_nchw_keeps_the_group_kernels(rows_selected):
    check_group_norm_silu(gn_inputs(2, 6, 7, 9), 3, torch.float32, rows_op())
    assert rows_selected == {"fwd": 0, "bwd": 0}


def test_modulation_variants(rows_selected):
    for scale, shift in [(False, False), (True, False), (False, True)]:
        check_group_norm_silu(gn_inputs(2, 6, 7, 9, scale=scale, shift=shift, channels_last=True), 3, torch.float32,
                              rows_op())


def run_rows(inputs, groups, p_split):
    x, weight, bias, s, t, dy = inputs
    y, mean, rstd = rows.group_norm_silu_fwd_rows(x, weight, bias, s, t, groups, 1e-5, p_split=p_split)
    grads = rows.group_norm_silu_bwd_rows(dy, x, weight, bias, s, t, mean, rstd, groups, 1e-5, p_split=p_split)
    return (y, *grads), mean, rstd


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_forced_split_chunks(dtype):
    """Several chunks per sample (statistics and s1/s2 partials), chunks not dividing HW = 63."""
    lo = [v.to(dtype) for v in gn_inputs(2, 6, 7, 9, channels_last=True)]
    check_split_vs_whole(run_rows, lo, 2, dtype, 16, 64)


def test_statistics_are_fp32_and_stable():
    """Mean 1e3 with unit spread, split into chunks: the partials combine without cancellation."""
    g = torch.Generator().manual_seed(3)
    x = 1000 + torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    x_cl = x.float().contiguous(memory_format=torch.channels_last)
    for p_split in (None, 8):
        _, mean, rstd = rows.group_norm_silu_fwd_rows(x_cl, torch.ones(4), torch.zeros(4), None, None, 2, 1e-5,
                                                      p_split=p_split)
        xg = x.view(2, 2, -1)
        assert mean.dtype == rstd.dtype == torch.float32
        torch.testing.assert_close(mean.double(), xg.mean(-1), rtol=1e-6, atol=0)
        torch.testing.assert_close(rstd.double(), (xg.var(-1, correction=0) + 1e-5).rsqrt(), rtol=1e-4, atol=0)


@pytest.mark.parametrize("p_split", [None, 16], ids=["plan", "split"])
def test_gradients_are_deterministic(p_split):
    inputs = [v.float() for v in gn_inputs(2, 6, 7, 9, channels_last=True)]
    for a, b in zip(run_rows(inputs, 3, p_split)[0], run_rows(inputs, 3, p_split)[0], strict=True):
        assert torch.equal(a, b)


def test_choice_is_validated():
    with pytest.raises(ValueError, match="unknown GroupNorm-SiLU design 'columns'"):
        choose_design(torch.empty(1, 4, 3, 3), "columns")
    assert not rows.rows_supported(torch.empty(1, 4, 3, 3))  # NCHW
    assert rows.rows_supported(torch.empty(1, 4, 3, 3).contiguous(memory_format=torch.channels_last))
    too_wide = torch.empty(1, rows.MAX_ROWS_CHANNELS + 1, 1, 2).contiguous(memory_format=torch.channels_last)
    assert not rows.rows_supported(too_wide)


def test_run_config_selects_the_kernels():
    """kernels.group_norm_silu_channels_last reaches the op when a run resolves its ops for CUDA."""
    from hybengine.config import ConfigError, load_config

    x = torch.empty(1, 4, 3, 3).contiguous(memory_format=torch.channels_last)
    assert choose_design(x) == "groups" and choose_design(x, "rows") == "rows"
    assert choose_design(x.contiguous(), "rows") == "groups" and choose_design(x.contiguous(), "slab") == "slab"
    cfg = load_config(None, ["kernels.group_norm_silu_channels_last=rows"])
    assert cfg.kernels.group_norm_silu_channels_last == "rows"
    assert ops.resolve_ops(cfg.kernels, "cuda").group_norm_silu.keywords["design"] == "rows"  # an argument
    assert ops.resolve_ops(KernelConfig(), "cuda").group_norm_silu.keywords["design"] == "auto"
    with pytest.raises(ConfigError, match="group_norm_silu_channels_last"):
        load_config(None, ["kernels.group_norm_silu_channels_last=columns"])
