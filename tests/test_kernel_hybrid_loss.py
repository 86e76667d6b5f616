"""Fused hybrid loss against a float64 reference: both per-sample terms and the gradient of F.

Runs the Triton kernel through the interpreter on CPU (conftest sets TRITON_INTERPRET=1).
"""
import random

import pytest
import torch
from kernel_helpers import LOSS_NAMES, W_MASK, assert_matches, check_hybrid_loss, loss_inputs, loss_terms_and_grad

from hybengine.kernels import bodies, hybrid_loss, hybrid_loss_reference
from hybengine.kernels.hybrid_loss import BODIES, hybrid_loss_bwd_triton, hybrid_loss_fwd_math, hybrid_loss_fwd_triton

pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")
needs_triton = pytest.mark.skipif(bodies.select("hybrid_loss", "cpu") != "triton-interpreter",
                                  reason="Triton interpreter not active")

# (b, I, K, h, w): H*W = 7*9, grayscale and RGB, binary and multi-class, N = 1, an all-ignored sample
SHAPES = {
    "rgb_binary": (2, 3, 2, 7, 9),
    "gray_multiclass": (1, 1, 5, 7, 9),
    "all_ignored_sample": (3, 3, 3, 8, 8),
}


def as_float(inputs):
    return [t.float() if t.is_floating_point() else t for t in inputs]


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_matches_reference(shape, channels_last, dtype):
    check_hybrid_loss(*loss_inputs(*SHAPES[shape], channels_last=channels_last), dtype)


@needs_triton
def test_other_ignore_index():
    inputs, upstream = loss_inputs(2, 3, 4, 7, 9, ignore_index=255)
    check_hybrid_loss(inputs, upstream, torch.float32, ignore_index=255)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_forced_split(dtype):
    """Several programs per sample (16 pixels each, not dividing 63): partials reduced afterwards."""
    (out, x_n, x, y, c_skip, c_out, lam), (g_d, g_m) = loss_inputs(3, 3, 3, 7, 9, channels_last=True)
    lo = (out.to(dtype), x_n.to(dtype), x.to(dtype), y, c_skip, c_out, lam)
    denoise, mask, dF, mask_scale = hybrid_loss_fwd_triton(*lo, W_MASK, -100, True, p_per_prog=16)
    d_out = hybrid_loss_bwd_triton(dF, g_d.float(), g_m.float(), mask_scale, 3, p_per_prog=16)
    as64 = [t.double() if t.is_floating_point() else t for t in lo]
    ref = loss_terms_and_grad(hybrid_loss_reference, as64, (g_d, g_m))
    lowp = loss_terms_and_grad(hybrid_loss_reference, lo, (g_d, g_m))
    for name, o, r, lp in zip(LOSS_NAMES, (denoise, mask, d_out), ref, lowp, strict=True):
        assert_matches(name, o, r, lp, dtype)


@needs_triton
def test_randomized_shapes():
    rng = random.Random(4321)
    for i in range(5):
        shape = (rng.randint(1, 3), rng.choice([1, 3]), rng.randint(1, 6), rng.randint(1, 10), rng.randint(1, 10))
        check_hybrid_loss(*loss_inputs(*shape, channels_last=rng.random() < 0.5, seed=i), torch.float32)


@needs_triton
def test_deterministic():
    inputs, upstream = loss_inputs(3, 3, 3, 7, 9)
    first, second = (loss_terms_and_grad(hybrid_loss, as_float(inputs), upstream) for _ in range(2))
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


@needs_triton
def test_no_grad_skips_dF():
    inputs = as_float(loss_inputs(2, 3, 2, 7, 9)[0])
    with torch.no_grad():
        denoise, mask = hybrid_loss(*inputs, W_MASK)
        _, _, dF, _ = torch.ops.hybengine.hybrid_loss_fwd(*inputs, W_MASK, -100, False)
    assert dF.numel() == 0
    torch.testing.assert_close((denoise, mask), hybrid_loss_reference(*inputs, W_MASK), rtol=1e-5, atol=1e-6)


@needs_triton
def test_opcheck():
    out, *rest = as_float(loss_inputs(2, 3, 2, 3, 5)[0])
    op = torch.ops.hybengine.hybrid_loss_fwd.default
    torch.library.opcheck(op, (out.requires_grad_(), *rest, W_MASK, -100, True))
    torch.library.opcheck(op, (out.detach(), *rest, W_MASK, -100, False))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_math_path(channels_last, dtype):
    math = lambda *a, **k: hybrid_loss(*a, **k, body="math")  # the op with its math body
    for shape in SHAPES.values():
        check_hybrid_loss(*loss_inputs(*shape, channels_last=channels_last), dtype, fn=math)


def test_math_gradcheck():
    """float64 takes the math path: its explicit dF and backward scaling against finite differences."""
    out, *rest = loss_inputs(3, 1, 3, 3, 4)[0]
    fn = lambda out: hybrid_loss(out, *rest, W_MASK)
    assert torch.autograd.gradcheck(fn, (out.requires_grad_(),))
    assert bodies.implementation("hybrid_loss", "auto", out, BODIES).name == "math"


def test_math_fwd_keeps_the_launcher_contract():
    out, *rest = loss_inputs(2, 3, 2, 4, 5, channels_last=True)[0]
    denoise, mask, dF, mask_scale = hybrid_loss_fwd_math(out.half(), *rest, W_MASK, -100, True)
    assert dF.dtype == torch.float16 and dF.stride() == out.stride()
    assert denoise.shape == mask.shape == mask_scale.shape == (2,)


@pytest.mark.parametrize("bad", ["y", "c_out", "no_classes"])
def test_bad_inputs_are_rejected(bad):
    out, x_n, x, y, c_skip, c_out, lam = loss_inputs(2, 3, 2, 4, 5)[0]
    y = y[:, :3] if bad == "y" else y
    c_out = c_out[:1] if bad == "c_out" else c_out
    out = out[:, :3] if bad == "no_classes" else out
    with pytest.raises(ValueError):
        hybrid_loss(out, x_n, x, y, c_skip, c_out, lam, W_MASK)


def test_a_sample_past_32_bit_offsets_is_refused_before_any_launch():
    out = torch.zeros(1, 1, 1, 1).expand(1, 2**15, 2**8, 2**8)  # 2**31 elements, never materialised
    x = torch.zeros(1, 1, 2**8, 2**8)
    y = torch.zeros(1, 2**8, 2**8, dtype=torch.long)
    one = torch.ones(1)
    with pytest.raises(ValueError, match=r"hybrid_loss: one sample of out .* 2147483648 elements.*reference"):
        hybrid_loss_fwd_triton(out, x, x, y, one, one, one, 0.2, -100, False)
