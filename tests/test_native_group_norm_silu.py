"""Native C++ GroupNorm-SiLU (kernels/native/) against the float64 reference: every output and
gradient, fp32 / bf16 / fp16, NCHW and channels-last, odd sizes, shifted inputs; both schedules
bitwise equal; opcheck. Skipped (with the reason) when the library was not built."""
import functools

import pytest
import torch
from kernel_helpers import GN_NAMES, check_group_norm_silu, gn_inputs, gn_outputs_and_grads, max_err

from hybengine.kernels import bodies, group_norm_silu_reference, native
from hybengine.kernels import group_norm_silu as fused_group_norm_silu

group_norm_silu = functools.partial(fused_group_norm_silu, body="native")  # the op, its native body
NATIVE = ("auto", "native")  # the custom op's last arguments: design, body

pytestmark = pytest.mark.skipif(not native.available(), reason=f"native library: {native.status()}")

# (n, c, h, w, groups): C not a power of two, H*W = 7*9, N = 1, one group, many groups; channels
# not a multiple of the vector width (12, 40); a shape with one task per group and groups of
# more than one statistics tile (2304 > 2048 elements); odd sizes with few groups (split tasks).
SHAPES = {
    "odd": (2, 6, 7, 9, 3),
    "one_group": (1, 5, 7, 9, 1),
    "many_groups": (1, 12, 7, 9, 12),
    "wide_channels": (2, 40, 9, 7, 5),
    "per_group_tiles": (4, 16, 24, 24, 4),
    "few_groups_large": (1, 6, 33, 35, 2),
    "large_sample": (2, 16, 96, 96, 2),  # several statistics tiles per channel plane
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_matches_reference(shape, channels_last, dtype):
    """Error vs float64 within a few ulps, or within 4x PyTorch's own error in that dtype."""
    assert bodies.available("group_norm_silu", "native")
    n, c, h, w, g = SHAPES[shape]
    check_group_norm_silu(gn_inputs(n, c, h, w, channels_last=channels_last), g, DTYPES[dtype], fn=group_norm_silu)


@pytest.mark.parametrize("scale,shift", [(False, False), (True, False), (False, True)])
def test_modulation_variants(scale, shift):
    check_group_norm_silu(gn_inputs(2, 6, 7, 9, scale=scale, shift=shift), 3, torch.float32, fn=group_norm_silu)


def test_bf16_error_is_at_most_pytorchs():
    """bf16: our error vs float64 next to that of PyTorch's own bf16 GroupNorm+SiLU (autograd)."""
    x, weight, bias, s, t, dy = gn_inputs(2, 24, 16, 16, channels_last=True, seed=5)
    lo = [v.bfloat16() for v in (x, weight, bias, s, t)]
    ref = gn_outputs_and_grads(group_norm_silu_reference, *[v.double() for v in lo], dy.bfloat16().double(), 6)
    torch_bf16 = gn_outputs_and_grads(group_norm_silu_reference, *lo, dy.bfloat16(), 6)
    ours = gn_outputs_and_grads(group_norm_silu, *lo, dy.bfloat16(), 6)
    for name, o, r, p in zip(GN_NAMES, ours, ref, torch_bf16, strict=True):
        assert max_err(o, r) <= 1.5 * max_err(p, r) + 1e-6, name


def test_statistics_are_fp32_and_stable():
    """Mean 1e3 with unit spread: E[x^2]-E[x]^2 in fp32 would lose most digits of the variance."""
    g = torch.Generator().manual_seed(3)
    for channels_last in (False, True):
        x = 1000 + torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
        xf = x.float().contiguous(memory_format=torch.channels_last) if channels_last else x.float()
        _, mean, rstd = torch.ops.hybengine.group_norm_silu_fwd(xf, torch.ones(4), torch.zeros(4), None, None, 2, 1e-5,
                                                                *NATIVE)
        xg = x.view(2, 2, -1)
        assert mean.dtype == rstd.dtype == torch.float32
        torch.testing.assert_close(mean.double(), xg.mean(-1), rtol=1e-6, atol=0)
        torch.testing.assert_close(rstd.double(), (xg.var(-1, correction=0) + 1e-5).rsqrt(), rtol=1e-4, atol=0)


@pytest.mark.parametrize("shape", [(1, 8, 40, 60, 4), (3, 8, 40, 60, 4), (1, 16, 96, 96, 2)],
                         ids=["one_sample", "three_samples", "large_sample"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_bitwise_deterministic_across_thread_counts(channels_last, shape):
    """1 and 2 threads take different schedules (NCHW: per group vs per tile/plane; channels-last:
    per sample vs per tile with one or three samples): same bits anyway."""
    n, c, h, w, groups = shape
    inputs = [v.float() if v is not None else None for v in gn_inputs(n, c, h, w, channels_last=channels_last)]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = gn_outputs_and_grads(group_norm_silu, *inputs[:5], inputs[5], groups)
        torch.set_num_threads(2)
        two = gn_outputs_and_grads(group_norm_silu, *inputs[:5], inputs[5], groups)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, two, strict=True):
        assert torch.equal(a, b)


def test_non_dense_input_keeps_its_layout_contract():
    """A strided view (not NCHW, not channels-last) works and matches the fake's empty_like."""
    x, weight, bias, s, t, dy = [v.float() for v in gn_inputs(2, 6, 7, 18)]
    view = x[..., ::2]
    y, mean, rstd = torch.ops.hybengine.group_norm_silu_fwd(view, weight, bias, s, t, 3, 1e-5, *NATIVE)
    assert y.stride() == torch.empty_like(view).stride()
    ref, _, _ = torch.ops.hybengine.group_norm_silu_fwd(view.contiguous(), weight, bias, s, t, 3, 1e-5, *NATIVE)
    torch.testing.assert_close(y, ref, rtol=0, atol=0)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_opcheck(channels_last):
    x, weight, bias, s, t, dy = [v.float() for v in gn_inputs(2, 6, 5, 7, channels_last=channels_last)]
    x.requires_grad_(), weight.requires_grad_(), s.requires_grad_()
    torch.library.opcheck(torch.ops.hybengine.group_norm_silu_fwd.default, (x, weight, bias, s, t, 3, 1e-5, *NATIVE))
    torch.library.opcheck(torch.ops.hybengine.group_norm_silu_fwd.default,
                          (x, weight, bias, None, None, 3, 1e-5, *NATIVE))
    with torch.no_grad():
        _, mean, rstd = torch.ops.hybengine.group_norm_silu_fwd(x, weight, bias, s, t, 3, 1e-5, *NATIVE)
    args = (dy, x.detach(), weight.detach(), bias, s.detach(), t, mean, rstd, 3, 1e-5, *NATIVE)
    torch.library.opcheck(torch.ops.hybengine.group_norm_silu_bwd.default, args)


def test_bad_inputs_are_rejected_by_the_library():
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="float32, bfloat16 or float16"):
        torch.ops.hybengine_native.group_norm_silu_fwd(x, torch.ones(4), torch.zeros(4), None, None, 2, 1e-5)
    with pytest.raises(RuntimeError, match="not divisible"):
        torch.ops.hybengine_native.group_norm_silu_fwd(x.float(), torch.ones(4), torch.zeros(4), None, None, 3, 1e-5)
