import pytest
import torch

from hybengine.config import ModelConfig
from hybengine.unet import build_unet  # without ops=: the reference ops


@pytest.mark.parametrize("image_channels, classes", [(1, 3), (3, 2)])
def test_shapes_and_dtypes(image_channels, classes):
    net = build_unet(ModelConfig(channels=8, channel_mult=[1, 2, 2], groups=4, attn_levels=[2]),
                     image_channels, classes)
    assert net.downsample_factor == 4
    x = torch.randn(2, image_channels, 16, 24)
    out = net(x, torch.randn(2))
    assert out.shape == (2, image_channels + classes, 16, 24) and out.dtype == torch.float32
    out.square().mean().backward()
    assert all(p.grad is not None for p in net.parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert net(x, torch.randn(2)).dtype == torch.bfloat16


def test_channels_last_matches_nchw():
    net = build_unet(ModelConfig(channels=8, channel_mult=[1, 2], groups=4), 1, 3)
    for p in net.parameters():  # zero-initialised output layers would make this trivially pass
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(2, 1, 16, 16)
    ref = net(x, torch.randn(2, generator=torch.Generator().manual_seed(0)))
    cl = net.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last),
                                                   torch.randn(2, generator=torch.Generator().manual_seed(0)))
    assert torch.allclose(ref, cl, atol=1e-5)


def test_presets_build():
    for preset, params in (("tiny", 0.5e6), ("small", 5e6), ("base", 50e6)):
        net = build_unet(ModelConfig(preset=preset), 3, 2)
        assert sum(p.numel() for p in net.parameters()) > params


def test_noise_conditioning_changes_output():
    net = build_unet(ModelConfig(channels=8, channel_mult=[1, 2], groups=4), 1, 3)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(1, 1, 8, 8)
    assert not torch.allclose(net(x, torch.tensor([-1.0])), net(x, torch.tensor([1.0])))


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a, b, dim=1).item()


def test_noise_embedding_is_smooth_in_sigma():
    """EDM's form: nearby sigmas give nearby features (the old x1000 form was close to a hash of sigma)."""
    import math

    from hybengine.unet import NoiseEmbedding

    def c(s):
        return torch.tensor([math.log(s) / 4])

    edm, old = NoiseEmbedding(32, 128, "edm"), NoiseEmbedding(32, 128, "x1000")
    assert ModelConfig().noise_embedding == "edm"
    assert _cos(edm.features(c(0.002)), edm.features(c(0.0021))) > 0.999
    assert _cos(old.features(c(0.002)), old.features(c(0.0021))) < 0.9
    # smooth over the whole range: a 1 % step in sigma never moves the features by more than 0.01 rad
    sig = torch.logspace(-3, 2, 200)
    f0, f1 = edm.features(sig.log() / 4), edm.features((sig * 1.01).log() / 4)
    assert (f0 - f1).abs().max().item() < 0.01


def test_old_checkpoint_config_is_refused():
    from hybengine.config import Config, to_dict
    from hybengine.unet import check_checkpoint_embedding

    saved = to_dict(Config())
    check_checkpoint_embedding(saved, "run/new")  # a new checkpoint passes
    del saved["model"]["noise_embedding"]
    with pytest.raises(ValueError, match="run/old: this checkpoint predates model.noise_embedding"):
        check_checkpoint_embedding(saved, "run/old")
