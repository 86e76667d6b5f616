"""DALI `mixed` (GPU) decode: the same batches as the torch path, on the GPU.

Skipped without CUDA or nvidia.dali (so on every CPU machine, CI included); benchmarks/gpu_suite.sh
runs it on a lent GPU after unpacking the DALI wheel there. What it shows:
- PNG (8 and 16 bit) through the GPU decoder gives the torch path's tensors: masks bit-identical,
  images equal up to fp32 rounding of the normalisation done on the GPU;
- JPEG (what ISIC ships) decoded by nvJPEG stays within a few grey levels of Pillow's decoder on
  4:4:4 JPEGs (an H200 run saw 0 levels), and the masks (PNG) stay exact. With 4:2:0 chroma and
  sharp colour edges the two decoders' chroma upsampling differed by up to 83 levels there, so
  that case is not compared;
- unlabeled images mixed into the batches get the torch path's all-ignore masks;
- the training loader picks DALI `mixed` on a GPU (`data.loader=auto`) and hands over CUDA tensors.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from test_data_helpers import write_pair

pytest.importorskip("nvidia.dali")
if not torch.cuda.is_available():
    pytest.skip("DALI mixed decode needs a CUDA device", allow_module_level=True)

from hybengine.config import DataConfig  # noqa: E402
from hybengine.data import TrainLoader, build_train_loader  # noqa: E402
from hybengine.data.dali_pipeline import DaliTrainLoader  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "demo_data" / "scratch-assay" / "fluorescence"


def torch_and_mixed(cfg: DataConfig, batch: int, seed: int = 0):
    t = build_train_loader(dataclasses.replace(cfg, loader="torch"), batch, seed)
    d = build_train_loader(dataclasses.replace(cfg, loader="dali"), batch, seed)
    assert isinstance(t, TrainLoader) and isinstance(d, DaliTrainLoader) and d.device == "mixed"
    return t, d


def compare(cfg: DataConfig, batch: int, n: int, atol: float) -> float:
    """Largest image difference over n batches; masks must match exactly."""
    t, d = torch_and_mixed(cfg, batch, seed=3)
    worst = 0.0
    for _ in range(n):
        (x, y), (dx, dy) = next(t), next(d)
        assert dx.is_cuda and dy.is_cuda and dx.dtype == torch.float32 and dy.dtype == torch.int64
        assert torch.equal(y, dy.cpu())
        worst = max(worst, (x - dx.cpu()).abs().max().item())
    d.close()
    assert worst <= atol, f"images differ by {worst}"
    return worst


@pytest.mark.parametrize("augment", [False, True])
def test_demo_16bit_png_matches_torch(augment):
    """Real 16-bit demo tiles through the GPU decoder, percentile normalisation, crops and flips."""
    cfg = DataConfig(root=str(DEMO), crop=64, augment=augment, intensity_jitter=0.2)
    worst = compare(cfg, 8, n=8, atol=1e-5)
    print(f"16-bit PNG, augment={augment}: max |torch - dali mixed| = {worst:.2e}")


def test_rgb_8bit_png_matches_torch(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(6):
        image = rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)
        write_pair(tmp_path, f"c{i}", image, np.where(image[..., 0] > 127, 255, 0).astype(np.uint8))
    cfg = DataConfig(root=str(tmp_path), image_channels=3, mask_format="binary255", num_classes=2,
                     normalize="dtype", crop=32)
    compare(cfg, 3, n=4, atol=1e-5)


def test_unlabeled_mix_matches_torch(tmp_path):
    """Unlabeled images mixed in (data.unlabeled_share=0.5): their placeholder masks and the has-mask column
    on the GPU give the torch path's all-ignore masks exactly, images to fp32 rounding."""
    from test_data_dali import unlabeled_folders

    compare(unlabeled_folders(tmp_path, "binary255"), 4, n=4, atol=1e-5)


def test_jpeg_close_to_pillow(tmp_path):
    """Smooth RGB JPEGs without chroma subsampling: nvJPEG vs Pillow differ by IDCT rounding at most."""
    from PIL import Image

    yy, xx = np.mgrid[0:64, 0:80]
    for i in range(6):
        image = np.stack([xx * 3 + i * 10, yy * 3, (xx + yy) + 40], -1).astype(np.uint8)  # smooth ramps
        mask = (image[..., 0] > 127).astype(np.uint8)
        write_pair(tmp_path, f"j{i}", image, mask, ext=".png")
        jpg = tmp_path / "train" / "images" / f"j{i}.jpg"
        Image.fromarray(image).save(jpg, quality=95, subsampling=0)  # 4:4:4: no chroma upsampling
        (tmp_path / "train" / "images" / f"j{i}.png").unlink()
    cfg = DataConfig(root=str(tmp_path), image_channels=3, num_classes=2, normalize="dtype", crop=48)
    worst = compare(cfg, 3, n=4, atol=12 * 2 / 255)  # within 12 grey levels of [0,255] mapped to [-1,1]
    print(f"JPEG: max |pillow - nvjpeg| = {worst * 255 / 2:.1f} grey levels")


def test_auto_picks_mixed_decode_on_gpu(caplog):
    cfg = DataConfig(root=str(DEMO), crop=64, loader="auto")
    with caplog.at_level(logging.INFO, logger="hybengine"):
        loader = build_train_loader(cfg, 4, seed=0)
    assert isinstance(loader, DaliTrainLoader) and loader.device == "mixed", caplog.text
    x, y = next(loader)
    assert x.is_cuda and y.is_cuda and x.shape == (4, cfg.image_channels, 64, 64)
    loader.close()
    assert "DALI, mixed decode" in caplog.text
