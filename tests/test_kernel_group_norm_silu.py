"""Fused GroupNorm-SiLU (+ modulation) against a float64 reference: every output and gradient.

Runs the Triton kernels through the interpreter on CPU (conftest sets TRITON_INTERPRET=1), so
tensors stay at hundreds to thousands of elements. bf16 is wrong under the interpreter; the GPU
check (benchmarks/check_kernels.py: its preflight in gpu_run.sh call 1, the whole in gpu_suite.sh)
covers it with these helpers.
"""
import random

import pytest
import torch
from kernel_helpers import (
    check_group_norm_silu,
    check_split_vs_whole,
    gn_inputs,
)

from hybengine.kernels import bodies, group_norm_silu
from hybengine.kernels.group_norm_silu import op
from hybengine.kernels.group_norm_silu.design import group_norm_silu_bwd_triton, group_norm_silu_fwd_triton
from hybengine.kernels.group_norm_silu.math_path import group_norm_silu_bwd_math, group_norm_silu_fwd_math
from hybengine.kernels.launch import split_plan

# triton 3.6's interpreter turns 1-element arrays into loop bounds (a numpy deprecation, fine < 2.4)
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")
needs_triton = pytest.mark.skipif(bodies.select("group_norm_silu", "cpu") != "triton-interpreter",
                                  reason="Triton interpreter not active")

# (n, c, h, w, groups): C not a power of two, H*W = 7*9, N = 1, one group, many groups, and a
# shape that the CPU launch plan splits over several programs per group.
SHAPES = {
    "odd": (2, 6, 7, 9, 3),
    "one_group": (1, 5, 7, 9, 1),
    "many_groups": (1, 12, 7, 9, 12),
    "split_by_plan": (1, 2, 16, 16, 1),
}


def test_split_shape_is_split():
    n, c, h, w, g = SHAPES["split_by_plan"]
    assert split_plan(n * g, h * w, c // g, torch.device("cpu"))[0] > 1


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_matches_reference(shape, channels_last, dtype):
    n, c, h, w, g = SHAPES[shape]
    check_group_norm_silu(gn_inputs(n, c, h, w, channels_last=channels_last), g, dtype)


@needs_triton
@pytest.mark.parametrize("scale,shift", [(False, False), (True, False), (False, True)])
def test_modulation_variants(scale, shift):
    check_group_norm_silu(gn_inputs(2, 6, 7, 9, scale=scale, shift=shift), 3, torch.float32)


def run_split(inputs, groups, hw_per_split):
    """The launchers directly, with a forced split size: (y, dx, dweight, dbias, dscale, dshift), mean, rstd."""
    x, weight, bias, s, t, dy = inputs
    y, mean, rstd = group_norm_silu_fwd_triton(x, weight, bias, s, t, groups, 1e-5, hw_per_split=hw_per_split)
    grads = group_norm_silu_bwd_triton(dy, x, weight, bias, s, t, mean, rstd, groups, 1e-5,
                                       hw_per_split=hw_per_split)
    return (y, *grads), mean, rstd


@needs_triton
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_forced_split_reduction(channels_last, dtype):
    """Several programs per group (statistics and S1/S2 partials), chunks not dividing HW = 63."""
    lo = [v.to(dtype) for v in gn_inputs(1, 6, 7, 9, channels_last=channels_last)]
    check_split_vs_whole(run_split, lo, 2, dtype, 16, 64)


@needs_triton
def test_statistics_are_fp32_and_stable():
    """Mean 1e3 with unit spread: E[x^2]-E[x]^2 in fp32 would lose most digits of the variance."""
    g = torch.Generator().manual_seed(3)
    x = 1000 + torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64)
    _, mean, rstd = group_norm_silu_fwd_triton(x.float(), torch.ones(4), torch.zeros(4), None, None, 2, 1e-5)
    xg = x.view(1, 2, -1)
    assert mean.dtype == rstd.dtype == torch.float32
    torch.testing.assert_close(mean.double(), xg.mean(-1), rtol=1e-6, atol=0)
    torch.testing.assert_close(rstd.double(), (xg.var(-1, correction=0) + 1e-5).rsqrt(), rtol=1e-4, atol=0)


@needs_triton
def test_randomized_shapes():
    """A bounded random sweep (fixed seed): groups, channels per group, odd spatial sizes, layouts."""
    rng = random.Random(1234)
    for i in range(6):
        groups, cg = rng.randint(1, 4), rng.randint(1, 5)
        n, h, w = rng.randint(1, 3), rng.randint(1, 11), rng.randint(1, 11)
        inputs = gn_inputs(n, groups * cg, h, w, scale=rng.random() < 0.5, shift=rng.random() < 0.5,
                           channels_last=rng.random() < 0.5, seed=i)
        check_group_norm_silu(inputs, groups, torch.float32)


@needs_triton
@pytest.mark.parametrize("hw_per_split", [None, 16], ids=["whole", "split"])
def test_gradients_are_deterministic(hw_per_split):
    """Same inputs twice: the output and every gradient have the same bits."""
    inputs = [v.float() for v in gn_inputs(1, 6, 7, 9, channels_last=True)]
    for a, b in zip(run_split(inputs, 2, hw_per_split)[0], run_split(inputs, 2, hw_per_split)[0], strict=True):
        assert torch.equal(a, b)


@needs_triton
def test_opcheck():
    x, weight, bias, s, t, _ = [v.float() for v in gn_inputs(2, 4, 3, 5)]
    x.requires_grad_(), weight.requires_grad_(), s.requires_grad_()
    op = torch.ops.hybengine.group_norm_silu_fwd.default
    torch.library.opcheck(op, (x, weight, bias, s, t, 2, 1e-5))
    x_cl = x.detach().contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(op, (x_cl, weight, bias, None, None, 2, 1e-5))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_math_path(channels_last, dtype):
    math = lambda *a, **k: group_norm_silu(*a, **k, body="math")  # the op with its math body
    check_group_norm_silu(gn_inputs(2, 6, 7, 9, channels_last=channels_last), 3, dtype, fn=math)
    check_group_norm_silu(gn_inputs(1, 5, 7, 9, scale=False), 1, dtype, fn=math)


def test_math_backward_gradcheck():
    """The explicit backward formulas (float64 always takes the math path) against finite differences."""
    x, weight, bias, s, t, _ = gn_inputs(2, 4, 3, 3)
    leaves = [v.requires_grad_() for v in (x, weight, bias, s, t)]
    fn = lambda x, w, b, s, t: group_norm_silu(x, w, b, 2, 1e-5, s, t)
    assert torch.autograd.gradcheck(fn, leaves)
    assert bodies.implementation("group_norm_silu", "auto", x, op.BODIES).name == "math"


def test_math_functions_keep_the_launcher_contract():
    """fwd/bwd math functions return what the launchers return: shapes, dtypes, layouts."""
    x, weight, bias, s, t, dy = [v.half() for v in gn_inputs(1, 4, 5, 3, channels_last=True)]
    y, mean, rstd = group_norm_silu_fwd_math(x, weight, bias, s, t, 2, 1e-5)
    assert y.dtype == torch.float16 and y.stride() == x.stride() and mean.shape == rstd.shape == (1, 2)
    dx, dw, db, ds, dt = group_norm_silu_bwd_math(dy, x, weight, bias, s, t, mean, rstd, 2, 1e-5)
    assert dx.stride() == x.stride() and dw.shape == db.shape == (4,) and ds.shape == dt.shape == (1, 4)


@pytest.mark.parametrize("bad", ["groups", "weight", "scale"])
def test_bad_inputs_are_rejected(bad):
    x, weight, bias, s, t, _ = [v.float() for v in gn_inputs(1, 4, 3, 3)]
    kwargs = dict(groups=3 if bad == "groups" else 2, scale=s[:, :2] if bad == "scale" else s, shift=t)
    with pytest.raises(ValueError):
        group_norm_silu(x, weight[:3] if bad == "weight" else weight, bias, **kwargs)


def test_a_sample_past_32_bit_offsets_is_refused_before_any_launch():
    # 1 x 2**15 x 2**8 x 2**8 = 2**31 elements in one sample, from a 4-byte storage (never materialised)
    x = torch.zeros(1, 1, 1, 1).expand(1, 2**15, 2**8, 2**8)
    w, b = torch.ones(2**15), torch.zeros(2**15)
    with pytest.raises(ValueError, match=r"group_norm_silu: one sample of x .* 2147483648 elements.*reference"):
        group_norm_silu_fwd_triton(x, w, b, None, None, 8, 1e-5)
