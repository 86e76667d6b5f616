"""Native C++ hybrid loss (kernels/native/) against the float64 reference: both per-sample terms
and the gradient of F, fp32 / bf16 / fp16, NCHW and channels-last, ignored pixels and samples;
deterministic; opcheck. Skipped (with the reason) when the library was not built."""
import functools

import pytest
import torch
from kernel_helpers import W_MASK, check_hybrid_loss, loss_inputs, loss_terms_and_grad

from hybengine.kernels import bodies, hybrid_loss_reference, native
from hybengine.kernels import hybrid_loss as fused_hybrid_loss

hybrid_loss = functools.partial(fused_hybrid_loss, body="native")  # the op, its native body

pytestmark = pytest.mark.skipif(not native.available(), reason=f"native library: {native.status()}")

# (b, I, K, h, w): H*W = 7*9, grayscale and RGB, binary and multi-class, N = 1, an all-ignored
# sample, and several pixel chunks per sample (40*30 = 1200 > 1024) ending in a ragged vector
SHAPES = {
    "rgb_binary": (2, 3, 2, 7, 9),
    "gray_multiclass": (1, 1, 5, 7, 9),
    "all_ignored_sample": (3, 3, 3, 8, 8),
    "chunked": (2, 3, 4, 40, 30),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_matches_reference(shape, channels_last, dtype):
    assert bodies.available("hybrid_loss", "native")
    check_hybrid_loss(*loss_inputs(*SHAPES[shape], channels_last=channels_last), DTYPES[dtype], fn=hybrid_loss)


def test_other_ignore_index():
    inputs, upstream = loss_inputs(2, 3, 4, 7, 9, ignore_index=255)
    check_hybrid_loss(inputs, upstream, torch.float32, ignore_index=255, fn=hybrid_loss)


def test_no_grad_writes_no_gradient():
    (out, *rest), _ = loss_inputs(2, 3, 2, 7, 9)
    args = [t.float() if t.is_floating_point() else t for t in (out, *rest)]
    with torch.no_grad():
        denoise, mask = hybrid_loss(*args, W_MASK)
    ref = hybrid_loss_reference(*args, W_MASK)
    torch.testing.assert_close(denoise, ref[0])
    torch.testing.assert_close(mask, ref[1])
    assert torch.ops.hybengine.hybrid_loss_fwd(*args, W_MASK, -100, False, "native")[2].numel() == 0


def test_mixed_layouts_and_int32_labels():
    """out channels-last, x_n NCHW, x a strided view, y int32: same terms and dF as the reference."""
    (out, x_n, x, y, c_skip, c_out, lam), upstream = loss_inputs(2, 3, 3, 7, 9, seed=4)
    wide = torch.cat([x, x], dim=3)[..., ::2]
    inputs = (out.float().contiguous(memory_format=torch.channels_last), x_n.float(), wide.float(), y.int(),
              c_skip, c_out, lam)
    ref = loss_terms_and_grad(hybrid_loss_reference, [t.double() if t.is_floating_point() else t.long()
                                                      for t in inputs], upstream)
    ours = loss_terms_and_grad(hybrid_loss, inputs, upstream)
    for o, r in zip(ours, ref, strict=True):
        torch.testing.assert_close(o.double(), r, rtol=1e-5, atol=1e-6)
    assert ours[2].stride() == inputs[0].stride()


def test_bitwise_deterministic_across_thread_counts():
    inputs, upstream = loss_inputs(3, 3, 4, 40, 30, channels_last=True)
    inputs = [t.float() if t.is_floating_point() else t for t in inputs]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = loss_terms_and_grad(hybrid_loss, inputs, upstream)
        torch.set_num_threads(2)
        two = loss_terms_and_grad(hybrid_loss, inputs, upstream)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, two, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_opcheck(channels_last):
    (out, x_n, x, y, c_skip, c_out, lam), (g_d, g_m) = loss_inputs(3, 3, 2, 5, 7, channels_last=channels_last)
    args = [t.float() if t.is_floating_point() else t for t in (out, x_n, x, y, c_skip, c_out, lam)]
    args[0].requires_grad_()
    torch.library.opcheck(torch.ops.hybengine.hybrid_loss_fwd.default, (*args, W_MASK, -100, True, "native"))
    with torch.no_grad():
        _, _, dF, mask_scale = torch.ops.hybengine.hybrid_loss_fwd(*args, W_MASK, -100, True, "native")
    torch.library.opcheck(torch.ops.hybengine.hybrid_loss_bwd.default,
                          (dF, g_d.float(), g_m.float(), mask_scale, 3, "native"))
