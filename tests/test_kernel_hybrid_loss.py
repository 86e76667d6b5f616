"""Fused hybrid loss against a float64 reference: both per-sample terms and the gradient of F.

Runs the Triton kernel through the interpreter on CPU (conftest sets TRITON_INTERPRET=1).
"""
import random

import pytest
import torch
from kernel_helpers import assert_matches

from hybengine.kernels import backends, hybrid_loss, hybrid_loss_reference
from hybengine.kernels.hybrid_loss import (
    hybrid_loss_bwd_triton,
    hybrid_loss_fwd_math,
    hybrid_loss_fwd_triton,
)

pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")
needs_triton = pytest.mark.skipif(backends.select("hybrid_loss", "cpu") != "triton-interpreter",
                                  reason="Triton interpreter not active")
W_MASK = 0.3


def make_inputs(b, n_img, k, h, w, *, channels_last=False, ignore_index=-100, seed=0):
    """float64 (out, x_n, x, y, c_skip, c_out, lam) and upstream grads (g_denoise, g_mask).

    Some pixels are ignored, and with b >= 3 the last sample is ignored entirely (n_valid = 0).
    """
    g = torch.Generator().manual_seed(seed)
    f = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    out = 2 * f(b, n_img + k, h, w)
    x = f(b, n_img, h, w)
    x_n = x + 1.5 * f(b, n_img, h, w)
    if channels_last:
        out, x_n = (t.contiguous(memory_format=torch.channels_last) for t in (out, x_n))
    y = torch.randint(0, k, (b, h, w), generator=g)
    y[torch.rand(b, h, w, generator=g) < 0.25] = ignore_index
    if b >= 3:
        y[-1] = ignore_index
    sigma = torch.exp(-1.2 + 1.2 * f(b))
    c_skip = 0.25 / (sigma**2 + 0.25)
    c_out = sigma * 0.5 / (sigma**2 + 0.25).sqrt()
    lam = (sigma**2 + 0.25) / (sigma * 0.5) ** 2
    return (out, x_n, x, y, c_skip, c_out, lam), (f(b), f(b))


def terms_and_grad(fn, inputs, upstream, ignore_index=-100):
    """(denoise, mask, dF) by autograd with the given upstream grads."""
    out, *rest = inputs
    out = out.detach().clone().requires_grad_()
    denoise, mask = fn(out, *rest, W_MASK, ignore_index)
    ((denoise * upstream[0].to(denoise.dtype)).sum() + (mask * upstream[1].to(mask.dtype)).sum()).backward()
    return denoise.detach(), mask.detach(), out.grad


def check_op(inputs, upstream, dtype, ignore_index=-100, fn=hybrid_loss):
    """out, x_n, x in `dtype` (x stays fp32, as data often does); compare with the float64 reference."""
    out, x_n, x, y, c_skip, c_out, lam = inputs
    rounded = (out.to(dtype), x_n.to(dtype), x.float(), y, c_skip.float(), c_out.float(), lam.float())
    as64 = [t.double() if t.is_floating_point() else t for t in rounded]
    ref = terms_and_grad(hybrid_loss_reference, as64, upstream, ignore_index)
    lowp = terms_and_grad(hybrid_loss_reference, rounded, upstream, ignore_index)
    ours = terms_and_grad(fn, rounded, upstream, ignore_index)
    assert ours[0].dtype == ours[1].dtype == torch.float32
    assert ours[2].dtype == dtype and ours[2].stride() == rounded[0].stride(), "dF keeps dtype and layout"
    for name, o, r, lp in zip(("denoise", "mask", "dF"), ours, ref, lowp, strict=True):
        assert_matches(name, o, r, lp, dtype)


# (b, I, K, h, w): H*W = 7*9, grayscale and RGB, binary and multi-class, N = 1, an all-ignored sample
SHAPES = {
    "rgb_binary": (2, 3, 2, 7, 9),
    "gray_multiclass": (1, 1, 5, 7, 9),
    "all_ignored_sample": (3, 3, 3, 8, 8),
}


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_matches_reference(shape, channels_last, dtype):
    inputs, upstream = make_inputs(*SHAPES[shape], channels_last=channels_last)
    check_op(inputs, upstream, dtype)


@needs_triton
def test_other_ignore_index():
    inputs, upstream = make_inputs(2, 3, 4, 7, 9, ignore_index=255)
    check_op(inputs, upstream, torch.float32, ignore_index=255)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_forced_split(dtype):
    """Several programs per sample (16 pixels each, not dividing 63): partials reduced afterwards."""
    (out, x_n, x, y, c_skip, c_out, lam), (g_d, g_m) = make_inputs(3, 3, 3, 7, 9, channels_last=True)
    lo = (out.to(dtype), x_n.to(dtype), x.to(dtype), y, c_skip, c_out, lam)
    denoise, mask, dF, mask_scale = hybrid_loss_fwd_triton(*lo, W_MASK, -100, True, p_per_prog=16)
    d_out = hybrid_loss_bwd_triton(dF, g_d.float(), g_m.float(), mask_scale, 3, p_per_prog=16)
    as64 = [t.double() if t.is_floating_point() else t for t in lo]
    ref = terms_and_grad(hybrid_loss_reference, as64, (g_d, g_m))
    lowp = terms_and_grad(hybrid_loss_reference, lo, (g_d, g_m))
    for name, o, r, lp in zip(("denoise", "mask", "dF"), (denoise, mask, d_out), ref, lowp, strict=True):
        assert_matches(name, o, r, lp, dtype)


@needs_triton
def test_randomized_shapes():
    rng = random.Random(4321)
    for i in range(5):
        shape = (rng.randint(1, 3), rng.choice([1, 3]), rng.randint(1, 6), rng.randint(1, 10), rng.randint(1, 10))
        inputs, upstream = make_inputs(*shape, channels_last=rng.random() < 0.5, seed=i)
        check_op(inputs, upstream, torch.float32)


@needs_triton
def test_deterministic():
    inputs, upstream = make_inputs(3, 3, 3, 7, 9)
    inputs = [t.float() if t.is_floating_point() else t for t in inputs]
    first, second = (terms_and_grad(hybrid_loss, inputs, upstream) for _ in range(2))
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


@needs_triton
def test_no_grad_skips_dF():
    inputs, _ = make_inputs(2, 3, 2, 7, 9)
    inputs = [t.float() if t.is_floating_point() else t for t in inputs]
    with torch.no_grad():
        denoise, mask = hybrid_loss(*inputs, W_MASK)
        _, _, dF, _ = torch.ops.hybengine.hybrid_loss_fwd(*inputs, W_MASK, -100, False)
    assert dF.numel() == 0
    ref = hybrid_loss_reference(*inputs, W_MASK)
    torch.testing.assert_close((denoise, mask), ref, rtol=1e-5, atol=1e-6)


@needs_triton
def test_opcheck():
    inputs, _ = make_inputs(2, 3, 2, 3, 5)
    out, *rest = [t.float() if t.is_floating_point() else t for t in inputs]
    op = torch.ops.hybengine.hybrid_loss_fwd.default
    torch.library.opcheck(op, (out.requires_grad_(), *rest, W_MASK, -100, True))
    torch.library.opcheck(op, (out.detach(), *rest, W_MASK, -100, False))


@pytest.fixture
def math_backend():
    backends.set_cpu_backend("math")
    yield
    backends.set_cpu_backend(None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_math_path(math_backend, channels_last, dtype):
    assert backends.op_backends()["hybrid_loss"]["cpu"] == "math"
    for shape in SHAPES.values():
        inputs, upstream = make_inputs(*shape, channels_last=channels_last)
        check_op(inputs, upstream, dtype)


def test_math_gradcheck():
    """float64 takes the math path: its explicit dF and backward scaling against finite differences."""
    (out, *rest), _ = make_inputs(3, 1, 3, 3, 4)
    fn = lambda out: hybrid_loss(out, *rest, W_MASK)
    assert torch.autograd.gradcheck(fn, (out.requires_grad_(),))
    assert backends.implementation("hybrid_loss", out).name == "math"


def test_math_fwd_contract():
    (out, *rest), _ = make_inputs(2, 3, 2, 4, 5, channels_last=True)
    denoise, mask, dF, mask_scale = hybrid_loss_fwd_math(out.half(), *rest, W_MASK, -100, True)
    assert dF.dtype == torch.float16 and dF.stride() == out.stride()
    assert denoise.shape == mask.shape == mask_scale.shape == (2,)


@pytest.mark.parametrize("bad", ["y", "c_out", "no_classes"])
def test_bad_inputs_are_rejected(bad):
    (out, x_n, x, y, c_skip, c_out, lam), _ = make_inputs(2, 3, 2, 4, 5)
    if bad == "y":
        y = y[:, :3]
    if bad == "c_out":
        c_out = c_out[:1]
    if bad == "no_classes":
        out = out[:, :3]
    with pytest.raises(ValueError):
        hybrid_loss(out, x_n, x, y, c_skip, c_out, lam, W_MASK)
