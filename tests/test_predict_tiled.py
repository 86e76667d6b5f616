"""Tiled prediction (hybengine/inference.py): Gaussian-blended tiles at the training crop, TTA, bounded memory.

Two networks: a tiny U-Net with random weights (context matters: tiles differ from the whole image) and
`PixelNet`, a per-pixel network (a 1x1 conv: no context), for which every tile predicts a pixel exactly as
the whole image does, so tiled == whole at every size proves each tile is cut, placed and weighed right.
"""
import dataclasses
import importlib.util

import numpy as np
import pytest
import torch

from hybengine.config import Config, load_config
from hybengine.inference import (
    Prediction,
    gaussian_weights,
    predict_probs,
    resolve_prediction,
    tile_starts,
)
from hybengine.objective import predict_logits
from hybengine.unet import build_unet

from tiny_run import REPO

K = 3


class PixelNet(torch.nn.Module):
    """(B, 1, H, W) -> (B, 1 + K, H, W) by a 1x1 conv: what it predicts at a pixel depends on that pixel only."""

    downsample_factor = 4  # as a 3-level U-Net: makes whole-image prediction pad

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1 + K, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([0.0, 3.0, -2.0, 0.5]).view(4, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([0.0, 0.1, 0.2, -0.3]))

    def forward(self, x, c_noise):
        return self.conv(x)


def _cfg(**predict) -> Config:
    cfg = load_config(None, ["data.crop=32", "model.channels=8", "model.channel_mult=[1,2]", "model.groups=4",
                             "data.num_classes=3"])
    return dataclasses.replace(cfg, predict=dataclasses.replace(cfg.predict, **predict))


@pytest.fixture(scope="module")
def unet():
    cfg = _cfg()
    torch.manual_seed(0)
    net = build_unet(cfg.model, 1, 3)
    with torch.no_grad():
        for p in net.parameters():  # random everywhere (conv_out starts at zero): predictions depend on context
            p.normal_(0, 0.2)
    return net.eval()


def _tiled(tile, overlap=0.5, batch=4, tta=False):
    return Prediction("tiled", tile, overlap, batch, tta, "fp32")


WHOLE = Prediction("whole", 0, 0.5, 1, False, "fp32")


def test_gaussian_weights_peak_at_the_centre_with_sigma_an_eighth_of_the_tile():
    w = gaussian_weights(64)
    assert w.shape == (64, 64) and float(w.max()) == pytest.approx(1.0, abs=1e-6) and float(w.min()) > 0
    assert torch.equal(w, w.T) and torch.equal(w, w.flip(0))
    # one sigma (8 px) from the centre (31.5) the weight is exp(-1/2) of the peak
    g = w[32] / w[32].max()
    assert float(g[39] / g[31]) == pytest.approx(np.exp(-0.5 * ((39 - 31.5) / 8) ** 2 + 0.5 * (0.5 / 8) ** 2), rel=1e-5)


@pytest.mark.parametrize(("size", "tile", "overlap"), [(45, 16, 0.5), (77, 32, 0.25), (33, 32, 0.5), (16, 16, 0.5),
                                                        (100, 16, 0.0)])
def test_tile_starts_cover_the_side_with_the_stride_bound(size, tile, overlap):
    s = tile_starts(size, tile, overlap)
    assert s[0] == 0 and s[-1] == size - tile and s == sorted(set(s))
    assert all(b - a <= tile * (1 - overlap) for a, b in zip(s, s[1:], strict=False))


def test_tiled_equals_whole_on_an_image_of_the_tile_size(unet):
    cfg = _cfg()
    x = torch.randn(1, 32, 32)
    tiled = predict_probs(unet, x, cfg, _tiled(32))
    whole = predict_probs(unet, x, cfg, WHOLE)
    torch.testing.assert_close(tiled, whole, atol=1e-6, rtol=1e-5)
    # ... and both are the softmax of the network's logits
    o = cfg.objective
    ref = predict_logits(unet, x[None], o.sigma_clean, o.sigma_data)[0].softmax(0)
    torch.testing.assert_close(whole, ref, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(("shape", "tile", "overlap"), [((45, 77), 16, 0.5), ((37, 20), 8, 0.3), ((5, 70), 16, 0.5)])
def test_tiled_matches_a_per_pixel_net_exactly_on_sizes_off_the_stride(shape, tile, overlap):
    net, cfg = PixelNet(), _cfg()
    x = torch.randn(1, *shape)
    tiled = predict_probs(net, x, cfg, _tiled(tile, overlap, batch=3))
    assert tiled.shape == (K, *shape)
    torch.testing.assert_close(tiled, predict_probs(net, x, cfg, WHOLE), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(tiled.sum(0), torch.ones(shape), atol=1e-5, rtol=0)


def test_tiles_blend_where_context_matters(unet):
    """With the U-Net, tiled prediction of a 2x-tile image differs from whole-image prediction (the
    context differs), is a probability map, and does not depend on how many tiles go in a batch."""
    cfg = _cfg()
    x = torch.randn(1, 61, 70)
    a = predict_probs(unet, x, cfg, _tiled(32, batch=1))
    b = predict_probs(unet, x, cfg, _tiled(32, batch=16))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.sum(0), torch.ones(61, 70), atol=1e-5, rtol=0)
    assert (a - predict_probs(unet, x, cfg, WHOLE)).abs().max() > 1e-3


@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (3, 2)])
def test_one_pixel_images(unet, shape):
    cfg = _cfg()
    for p in (_tiled(32), WHOLE, _tiled(32, tta=True)):
        probs = predict_probs(unet, torch.randn(1, *shape), cfg, p)
        assert probs.shape == (K, *shape) and torch.isfinite(probs).all()
        torch.testing.assert_close(probs.sum(0), torch.ones(shape), atol=1e-5, rtol=0)


def test_tta_averages_the_four_mirrorings(unet):
    cfg = _cfg()
    o = cfg.objective
    x = torch.randn(1, 32, 32)

    def mirrored(dims):  # probabilities of the flipped image, flipped back
        probs = predict_logits(unet, x[None].flip(dims), o.sigma_clean, o.sigma_data)[0].softmax(0)
        return probs.flip(dims)

    expected = sum(mirrored(d) for d in ([], [-1], [-2], [-2, -1])) / 4
    for p in (dataclasses.replace(WHOLE, tta=True), _tiled(32, tta=True)):
        got = predict_probs(unet, x, cfg, p)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    assert (expected - predict_probs(unet, x, cfg, WHOLE)).abs().max() > 1e-3  # mirroring changed something


def test_bf16_autocast_keeps_float32_probabilities(unet):
    """precision=bf16 (auto on CUDA) runs the forward pass under autocast; blending stays float32."""
    cfg = _cfg()
    x = torch.randn(1, 40, 50)
    a = predict_probs(unet, x, cfg, dataclasses.replace(_tiled(32, 0.25), precision="bf16"))
    b = predict_probs(unet, x, cfg, _tiled(32, 0.25))
    assert a.dtype == torch.float32 and 0 < (a - b).abs().max() < 0.02  # bf16 has 8 mantissa bits
    torch.testing.assert_close(a.sum(0), torch.ones(40, 50), atol=1e-5, rtol=0)


def test_resolve_prediction_reads_the_training_crop_and_refuses_a_tile_the_unet_cannot_take(unet):
    p = resolve_prediction(_cfg(), unet, torch.device("cpu"))
    assert (p.mode, p.tile, p.precision) == ("tiled", 32, "fp32")
    assert resolve_prediction(_cfg(precision="auto"), unet, torch.device("cuda")).precision == "bf16"
    assert resolve_prediction(_cfg(mode="whole"), unet).tile == 0
    with pytest.raises(ValueError, match="predict.tile=31 must be a multiple of 2"):
        resolve_prediction(_cfg(tile=31), unet)


def _rss_kib(key: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])
    raise AssertionError(key)


def test_a_4096_image_predicts_in_bounded_memory():
    """Peak resident memory while predicting a 4096^2 image (441 tiles of 256^2, 2 to a batch) stays within
    the image's own buffers (the (K, H, W) probability sum and the weight sum) plus 64 MiB, far below what
    the tiles' probabilities would take if they were all held (441 * 3 * 256^2 * 4 B = 331 MiB)."""
    try:
        open("/proc/self/clear_refs", "w").write("5")  # resets VmHWM, the peak resident size
    except OSError:
        pytest.skip("needs Linux /proc/self/clear_refs to measure the peak resident memory")
    net, cfg = PixelNet(), _cfg()
    side = 4096
    x = torch.randn(1, side, side)
    before = _rss_kib("VmRSS")
    open("/proc/self/clear_refs", "w").write("5")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # memory does not depend on it; small ops run several times faster on a busy host
    try:
        probs = predict_probs(net, x, cfg, _tiled(256, 0.25, batch=2))
    finally:
        torch.set_num_threads(threads)
    peak_mib = (_rss_kib("VmHWM") - before) / 1024
    buffers_mib = (K + 1) * side * side * 4 / 2**20  # probability sum (divided in place) + weight sum
    assert peak_mib < buffers_mib + 64, f"peak {peak_mib:.0f} MiB over {buffers_mib:.0f} MiB of buffers"
    for sl in (np.s_[:, :300, :300], np.s_[:, -260:, 1000:1300]):  # spot checks against the per-pixel truth
        torch.testing.assert_close(probs[sl], predict_probs(net, x[sl], cfg, WHOLE), atol=1e-5, rtol=1e-5)


def test_committed_prediction_page_regenerates_from_its_csv():
    spec = importlib.util.spec_from_file_location("measure_prediction", REPO / "scripts/measure_prediction.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.PAGE.read_text() == module.render(), "run python scripts/measure_prediction.py --render"
