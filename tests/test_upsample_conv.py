"""The sub-pixel upsample conv equals nearest-2x upsampling followed by the 3x3 conv, both ways."""
import pytest
import torch
from tolerance import assert_close_fp32

from hybengine import ops
from hybengine.config import KernelConfig, ModelConfig
from hybengine.kernels.upsample_conv import subpixel_weight, upsample_conv_reference, upsample_conv_subpixel
from hybengine.unet import build_unet


def _grads(fn, x, w, b, dy):
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, b) if t is not None]
    y = fn(leaves[0], leaves[1], leaves[2] if b is not None else None)
    y.backward(dy)
    return y, [t.grad for t in leaves]


@pytest.mark.parametrize("shape", [(2, 5, 4, 6), (3, 8, 7, 5), (1, 3, 1, 2)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("with_bias", [True, False])
def test_matches_reference_float64(shape, channels_last, with_bias):
    gen = torch.Generator().manual_seed(0)
    n, c, h, w = shape
    x = torch.randn(shape, dtype=torch.float64, generator=gen)
    weight = torch.randn(6, c, 3, 3, dtype=torch.float64, generator=gen)
    bias = torch.randn(6, dtype=torch.float64, generator=gen) if with_bias else None
    dy = torch.randn(n, 6, 2 * h, 2 * w, dtype=torch.float64, generator=gen)
    if channels_last:
        x, dy = x.contiguous(memory_format=torch.channels_last), dy.contiguous(memory_format=torch.channels_last)
    y, g = _grads(upsample_conv_subpixel, x, weight, bias, dy)
    y_ref, g_ref = _grads(upsample_conv_reference, x, weight, bias, dy)
    assert y.shape == y_ref.shape == (n, 6, 2 * h, 2 * w)
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    assert len(g) == len(g_ref) == (3 if with_bias else 2)
    for name, a, r in zip(("x", "weight", "bias"), g, g_ref, strict=False):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12, msg=lambda m, n=name: f"d{n}: {m}")


def test_fp32_channels_last_tiny_preset_shape():
    """The shape the tiny U-Net's Upsample sees at 64x64 (batch 8), in fp32: both the sub-pixel path and
    the reference are judged against the float64 reference, with tolerances that scale with each
    reduction's length (tests/tolerance.py), so the result holds on any CPU's instruction set."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, 64, 32, 32, generator=gen).contiguous(memory_format=torch.channels_last)
    weight, bias = 0.05 * torch.randn(64, 64, 3, 3, generator=gen), torch.randn(64, generator=gen)
    dy = torch.randn(8, 64, 64, 64, generator=gen).contiguous(memory_format=torch.channels_last)
    exact_y, exact_g = _grads(upsample_conv_reference, x.double(), weight.double(), bias.double(), dy.double())
    scale_y, scale_g = _grads(upsample_conv_reference, x.double().abs(), weight.double().abs(),
                              bias.double().abs(), dy.double().abs())
    # terms per element: y and dx sum over 64 channels x 9 taps (+ bias); dW over 8 x 64 x 64 output
    # pixels; db over the same pixels
    lengths = {"y": 64 * 9 + 1, "x": 64 * 9, "weight": 8 * 64 * 64, "bias": 8 * 64 * 64}
    for fn in (upsample_conv_subpixel, upsample_conv_reference):
        y, g = _grads(fn, x, weight, bias, dy)
        assert_close_fp32(y, exact_y, scale_y, lengths["y"], name=f"{fn.__name__} y")
        for name, a, r, sc in zip(("x", "weight", "bias"), g, exact_g, scale_g, strict=True):
            assert_close_fp32(a, r, sc, lengths[name], name=f"{fn.__name__} d{name}")


def test_phase_kernels_fold_the_taps():
    """K_ab = R_a W R_b^T, written out for one 3x3 kernel."""
    w = torch.arange(9, dtype=torch.float64).reshape(1, 1, 3, 3)  # rows (0 1 2) (3 4 5) (6 7 8)
    k = subpixel_weight(w)[:, 0]
    assert k.shape == (4, 2, 2)
    assert k[0].tolist() == [[0, 1 + 2], [3 + 6, 4 + 5 + 7 + 8]]  # a=0, b=0: taps (w0, w1+w2) both ways
    assert k[1].tolist() == [[0 + 1, 2], [3 + 4 + 6 + 7, 5 + 8]]  # a=0, b=1
    assert k[2].tolist() == [[0 + 3, 1 + 2 + 4 + 5], [6, 7 + 8]]  # a=1, b=0
    assert k[3].tolist() == [[0 + 1 + 3 + 4, 2 + 5], [6 + 7, 8]]  # a=1, b=1


def test_refuses_other_kernel_sizes():
    with pytest.raises(ValueError, match="3x3"):
        upsample_conv_subpixel(torch.randn(1, 2, 4, 4), torch.randn(3, 2, 5, 5), None)


def test_auto_choice_per_device():
    """upsample_conv resolves like the other ops (ops.resolve), with its fast form named "subpixel"."""
    assert ops.resolve("upsample_conv", "auto", torch.device("cpu")).path == "subpixel"
    assert ops.resolve("upsample_conv", "auto", torch.device("cuda")).path == "reference"
    assert ops.resolve("upsample_conv", "reference", torch.device("cpu")).path == "reference"
    assert ops.resolve("upsample_conv", "subpixel", torch.device("cuda")).path == "subpixel"
    assert ops.resolve_ops(KernelConfig(upsample_conv="subpixel"), "cpu").upsample_conv is upsample_conv_subpixel
    with pytest.raises(ValueError, match="kernels.upsample_conv='fused'"):
        ops.resolve("upsample_conv", "fused", torch.device("cpu"))


def test_unet_same_function_either_way():
    """The U-Net (its Upsample stages through ops.upsample_conv) gives the same output and gradients."""
    model = ModelConfig(channels=8, channel_mult=[1, 2, 2], groups=4, attn_levels=[])
    torch.manual_seed(0)
    init = build_unet(model, 1, 3).double()
    for p in init.parameters():  # zero-initialised layers would hide a mismatch
        torch.nn.init.normal_(p, std=0.2)
    x, c_noise = torch.randn(2, 1, 16, 16, dtype=torch.float64), torch.randn(2, dtype=torch.float64)
    results = {}
    for path in ("reference", "subpixel"):
        chosen = ops.resolve_ops(KernelConfig(group_norm_silu="reference", hybrid_loss="reference",
                                              upsample_conv=path), "cpu")
        assert chosen.chosen()["upsample_conv"] == path
        net = build_unet(model, 1, 3, chosen).double()
        net.load_state_dict(init.state_dict())
        out = net(x, c_noise)
        results[path] = (out, torch.autograd.grad(out.square().sum(), list(net.parameters())))
    (out_r, g_r), (out_s, g_s) = results["reference"], results["subpixel"]
    torch.testing.assert_close(out_s, out_r, rtol=1e-10, atol=1e-10)
    for (name, _), a, r in zip(net.named_parameters(), g_s, g_r, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-9, msg=lambda m, n=name: f"{n}: {m}")


def test_bench_upsample_conv_writes_a_checked_row(tmp_path):
    import csv
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    out_csv = tmp_path / "upsample_conv.csv"
    r = subprocess.run([sys.executable, str(repo / "benchmarks" / "bench_upsample_conv.py"), "--shapes", "2,8,8,8",
                        "--layouts", "nhwc", "--repeats", "2", "--rep", "1", "--csv", str(out_csv)],
                       cwd=repo, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    (row,) = csv.DictReader(out_csv.open(newline=""))
    assert row["shape"] == "2x8x8x8" and row["layout"] == "nhwc" and row["dtype"] == "fp32"
    assert float(row["max_err"]) < 1e-5
    lo, hi = (float(v) for v in row["speedup_range"].split("-"))
    assert 0 < lo <= float(row["speedup"]) <= hi


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_judged_like_the_kernels(channels_last, dtype):
    """The rule benchmarks/check_kernels.py applies on the GPU (bf16 too): within a few times
    PyTorch's own error in that dtype, against float64."""
    from kernel_helpers import check_upsample_conv, upsample_inputs

    errors = check_upsample_conv(upsample_inputs(2, 5, 6, 7, 9, channels_last=channels_last), dtype)
    assert set(errors) == {"y", "dx", "dweight", "dbias"}


def test_upsample_stage_runs_its_conv_module():
    """The Upsample's conv is called as a module (so hooks, e.g. ZeRO-3's parameter gathering, run)
    and keeps a plain Conv2d's state-dict keys."""
    from hybengine.unet import Upsample

    up = Upsample(4, ops.REFERENCE)
    assert set(up.state_dict()) == {"conv.weight", "conv.bias"}
    calls = []
    up.conv.register_forward_pre_hook(lambda module, args: calls.append(module))
    y = up(torch.randn(1, 4, 3, 5))
    assert calls == [up.conv] and y.shape == (1, 4, 6, 10)
