import pytest
import torch

from hybengine import ops
from hybengine.config import KernelConfig, ModelConfig
from hybengine.unet import build_unet


@pytest.fixture(autouse=True)
def reference_ops():
    ops.configure(KernelConfig(group_norm_silu="reference", hybrid_loss="reference", upsample_conv="reference"),
                  torch.device("cpu"))


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
