"""DALI pipeline on CPU (device_id=None): same tensors as the torch path, aligned masks, rank
shards, resume, and errors that name the file. Skipped when nvidia.dali is not installed."""
from __future__ import annotations

import dataclasses
import itertools
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from test_data_helpers import threshold_folder, write_pair, write_png

pytest.importorskip("nvidia.dali")

from hybengine.config import DataConfig  # noqa: E402
from hybengine.data import DatasetError, TrainLoader, build_train_loader  # noqa: E402
from hybengine.data.dali_pipeline import DaliTrainLoader  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "demo_data" / "scratch-assay" / "fluorescence"


def both(cfg: DataConfig, batch: int, seed: int = 0, **kw):
    return (build_train_loader(dataclasses.replace(cfg, loader="torch"), batch, seed, **kw),
            build_train_loader(dataclasses.replace(cfg, loader="dali"), batch, seed, **kw))


def assert_same_batches(torch_loader, dali_loader, n: int) -> None:
    assert isinstance(dali_loader, DaliTrainLoader) and isinstance(torch_loader, TrainLoader)
    for _ in range(n):
        (x, y), (dx, dy) = next(torch_loader), next(dali_loader)
        assert dx.dtype == torch.float32 and dy.dtype == torch.int64
        assert torch.equal(x, dx), (x - dx).abs().max()
        assert torch.equal(y, dy)


@pytest.mark.parametrize("augment", [False, True])
def test_demo_16bit_identical_to_torch(augment):
    """Real 16-bit demo tiles, percentile normalisation: bit-identical with augmentation off, and
    on (both paths draw the same parameters from (seed, epoch, index))."""
    cfg = DataConfig(root=str(DEMO), crop=64, augment=augment, intensity_jitter=0.2)
    assert_same_batches(*both(cfg, 8, seed=3), n=8)  # 64 items: crosses the 56-item epoch end


def test_rgb_8bit_binary_masks_identical_to_torch(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(5):
        image = rng.integers(0, 256, (20, 26, 3), dtype=np.uint8)
        write_pair(tmp_path, f"c{i}", image, np.where(image[..., 0] > 127, 255, 0).astype(np.uint8))
    cfg = DataConfig(root=str(tmp_path), image_channels=3, mask_format="binary255", num_classes=2,
                     normalize="dtype", crop=16)
    assert_same_batches(*both(cfg, 3), n=4)


def test_augmented_alignment_exact(tmp_path):
    """Masks computed from the images (image > 127): after DALI's crop/transpose/flips/jitter one
    threshold still separates the classes in every sample."""
    cfg = threshold_folder(tmp_path, 6, 33, 45)
    cfg = dataclasses.replace(cfg, crop=24, intensity_jitter=0.3, loader="dali")
    loader = build_train_loader(cfg, 4, seed=7)
    for _ in range(6):
        x, y = next(loader)
        for img, msk in zip(x[:, 0], y, strict=True):
            assert 0 < msk.sum() < msk.numel()
            assert img[msk == 0].max() < img[msk == 1].min()


def test_two_ranks_disjoint_and_covering(tmp_path):
    """Image i is flat with value 10 * i, so each sample says which file it is."""
    n = 10
    for i in range(n):
        write_pair(tmp_path, f"f{i}", np.full((12, 12), 10 * i, np.uint8), np.zeros((12, 12), np.uint8))
    cfg = DataConfig(root=str(tmp_path), normalize="dtype", crop=8, augment=False, loader="dali")
    seen = {}
    for rank in range(2):
        loader = build_train_loader(cfg, 5, seed=4, rank=rank, world_size=2)
        x, _ = next(loader)  # one global batch of 2 x 5 = one epoch
        seen[rank] = {int(round((float(v) + 1) / 2 * 255 / 10)) for v in x.mean(dim=(1, 2, 3))}
    assert len(seen[0]) == len(seen[1]) == 5
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(n))


def test_resume_exact():
    cfg = DataConfig(root=str(DEMO), crop=32, loader="dali")
    straight = build_train_loader(cfg, 4, seed=1)
    want = [next(straight) for _ in range(5)]
    part = build_train_loader(cfg, 4, seed=1)
    next(part), next(part)
    resumed = build_train_loader(cfg, 4, seed=1)
    resumed.load_state_dict(part.state_dict())
    for x, y in want[2:]:
        rx, ry = next(resumed)
        assert torch.equal(x, rx) and torch.equal(y, ry)


def test_corrupt_file_named_at_startup_and_mid_run(tmp_path):
    cfg = threshold_folder(tmp_path, 4, 16, 16)
    cfg = dataclasses.replace(cfg, crop=16, loader="dali")
    bad = tmp_path / "train" / "images" / "img002.png"
    good_bytes = bad.read_bytes()
    bad.write_bytes(good_bytes[:40])
    with pytest.raises(DatasetError, match="img002.png"):
        build_train_loader(cfg, 4, seed=0)
    bad.write_bytes(good_bytes)
    loader = build_train_loader(cfg, 4, seed=0)  # passes the start-up check
    bad.write_bytes(good_bytes[:40])  # then the file breaks under DALI's feet
    with pytest.raises(DatasetError, match=r"img002\.png"):
        next(loader)


def test_unsuitable_data_and_auto_choice(tmp_path, caplog):
    cfg = threshold_folder(tmp_path, 3, 10, 40)
    cfg = dataclasses.replace(cfg, crop=16)
    with pytest.raises(DatasetError, match="smaller than data.crop=16"):
        build_train_loader(dataclasses.replace(cfg, loader="dali"), 2, 0)
    with caplog.at_level(logging.INFO, logger="hybengine.data"):
        loader = build_train_loader(dataclasses.replace(cfg, loader="auto"), 2, 0)
    assert isinstance(loader, TrainLoader)
    assert "data.loader=auto" in caplog.text and ("CUDA" in caplog.text or "smaller" in caplog.text)


def test_mixed_bit_depths_close_to_torch(tmp_path):
    """8- and 16-bit images in one folder: DALI decodes all as uint16 (8-bit x 257) and rescales
    their normalisation, so results match to float rounding, not bit for bit."""
    rng = np.random.default_rng(2)
    for i, dtype in itertools.product(range(2), (np.uint8, np.uint16)):
        image = rng.integers(0, np.iinfo(dtype).max, (16, 16), dtype=dtype)
        write_pair(tmp_path, f"{dtype.__name__}_{i}", image, np.zeros((16, 16), np.uint8))
    cfg = DataConfig(root=str(tmp_path), crop=16, num_classes=2)
    t, d = both(cfg, 4)
    (x, y), (dx, dy) = next(t), next(d)
    torch.testing.assert_close(dx, x, rtol=0, atol=1e-5)
    assert torch.equal(y, dy)


def test_few_label_augmentation_close_to_torch(tmp_path):
    """Zoom, rotation, gamma, blur and noise in DALI (warp_affine, pow, gaussian_blur, the torch path's
    noise) with the torch path's parameters: the same masks but for rounding ties of the nearest
    lookup, images equal to float rounding; elastic deformation, which DALI lacks, is refused by name."""
    rng = np.random.default_rng(2)
    for i in range(4):
        mask = np.zeros((40, 52), np.uint8)
        mask[rng.integers(0, 20):rng.integers(22, 40), rng.integers(0, 25):rng.integers(27, 52)] = 1
        image = (mask * 120 + 60 + rng.integers(0, 40, mask.shape)).astype(np.uint8)
        write_pair(tmp_path, f"b{i}", image, mask)
    cfg = DataConfig(root=str(tmp_path), num_classes=2, normalize="dtype", crop=24, intensity_jitter=0.1,
                     aug_scale=0.3, aug_rotate=20, aug_gamma=0.4, aug_blur=1.0, aug_noise=0.05)
    torch_loader, dali_loader = both(cfg, 4, seed=5)
    outside = 0
    for _ in range(3):
        (x, y), (dx, dy) = next(torch_loader), next(dali_loader)
        assert (y == dy).float().mean() > 0.99  # 1.0 when measured; ties of the nearest lookup may differ
        assert ((x - dx).abs() < 1e-3).float().mean() > 0.99, (x - dx).abs().max()
        outside += int((y == 255).sum())
    assert outside > 0  # the warps zoomed out past the file's edge: they ran
    with pytest.raises(DatasetError, match="aug_elastic"):
        build_train_loader(dataclasses.replace(cfg, loader="dali", aug_elastic=2.0), 2, 0)


def unlabeled_folders(root: Path, mask_format: str) -> DataConfig:
    """A labeled train split (masks computed from the images), `<root>/unlabeled/images` and a second
    folder named by data.unlabeled whose `masks/` holds files no reader accepts: opening one fails."""
    rng = np.random.default_rng(4)
    fg = 255 if mask_format == "binary255" else 1
    for i in range(5):
        image = rng.integers(0, 256, (20, 26), dtype=np.uint8)
        write_pair(root / "data", f"l{i}", image, np.where(image > 127, fg, 0).astype(np.uint8))
    for i, (h, w) in enumerate([(18, 22), (24, 17), (16, 30)]):
        write_png(root / "data" / "unlabeled" / "images" / f"u{i}.png", rng.integers(0, 256, (h, w), dtype=np.uint8))
    for i, (h, w) in enumerate([(21, 19), (17, 25)]):
        write_png(root / "other" / "images" / f"o{i}.png", rng.integers(0, 256, (h, w), dtype=np.uint8))
        (root / "other" / "masks").mkdir(parents=True, exist_ok=True)
        (root / "other" / "masks" / f"o{i}.png").write_bytes(b"not a png: a loader that opens it fails")
    return DataConfig(root=str(root / "data"), num_classes=2, normalize="dtype", mask_format=mask_format,
                      crop=16, intensity_jitter=0.2, unlabeled=[str(root / "other")], unlabeled_share=0.5)


@pytest.mark.parametrize("few", [False, True])
def test_unlabeled_mix_identical_to_torch_and_resumes(tmp_path, few):
    """Batches of 4 with 2 unlabeled samples (5 unlabeled images from two folders, one with unreadable masks
    beside them): DALI's batches are the torch loader's, straight and resumed in the middle of an epoch, and the
    unlabeled samples' masks are ignore_index throughout (binary255: the has-mask column comes after // 255).
    few: with the few-label augmentations on (labeled samples only), labeled samples equal to float rounding,
    unlabeled ones exactly."""
    cfg = unlabeled_folders(tmp_path, "binary255" if few else "index")
    if few:
        cfg = dataclasses.replace(cfg, aug_scale=0.3, aug_rotate=20, aug_gamma=0.4, aug_blur=1.0, aug_noise=0.05)
    torch_loader, dali_loader = both(cfg, 4, seed=3)
    assert isinstance(dali_loader, DaliTrainLoader) and dali_loader.unlabeled_k == 2
    want = [next(torch_loader) for _ in range(6)]  # 12 labeled items of 5, 12 unlabeled of 5: epochs cross
    for n, (x, y) in enumerate(want):
        dx, dy = next(dali_loader)
        assert (y[2:] == 255).all() and (dy[2:] == 255).all()
        assert ((y[:2] == 0) | (y[:2] == 1)).float().mean() > 0.5  # labeled: classes, not ignore
        assert torch.equal(x[2:], dx[2:]), (n, (x[2:] - dx[2:]).abs().max())
        if few:
            assert (y == dy).float().mean() > 0.99
            assert ((x - dx).abs() < 1e-3).float().mean() > 0.99, (x - dx).abs().max()
        else:
            assert torch.equal(x, dx) and torch.equal(y, dy), n
    assert dali_loader.state_dict() == torch_loader.state_dict() == {"epoch": 2, "batch": 6}
    resumed = build_train_loader(dataclasses.replace(cfg, loader="dali"), 4, seed=3)
    resumed.load_state_dict({"epoch": 1, "batch": 3})  # labeled item 6 of 10: in the middle of epoch 1
    for x, y in want[3:]:
        rx, ry = next(resumed)
        assert torch.equal(x[2:], rx[2:]) and torch.equal(y[2:], ry[2:])
        if not few:
            assert torch.equal(x, rx) and torch.equal(y, ry)
    if not few:  # rank 1 of 2: the torch path's shard of both streams
        assert_same_batches(*both(cfg, 4, seed=3, rank=1, world_size=2), n=2)


def test_unlabeled_files_dali_cannot_read_are_named(tmp_path, caplog):
    """An unlabeled image that breaks after the start-up check is named by its path; unlabeled images smaller
    than the crop or with alpha: data.loader=dali names each and says what to do; data.loader=auto (no GPU
    here) takes the torch path and mixes them in."""
    cfg = unlabeled_folders(tmp_path, "index")
    loader = build_train_loader(dataclasses.replace(cfg, loader="dali"), 4, 0)  # passes the start-up check
    bad = tmp_path / "other" / "images" / "o1.png"
    good = bad.read_bytes()
    bad.write_bytes(good[:40])  # then breaks under DALI's feet: 3 batches visit all 5 images
    with pytest.raises(DatasetError, match=r"other/images/o1\.png"):
        for _ in range(3):
            next(loader)
    bad.write_bytes(good)
    write_png(tmp_path / "other" / "images" / "tiny.png", np.zeros((12, 40), np.uint8))
    write_png(tmp_path / "other" / "images" / "rgba.png", np.full((20, 20, 4), 90, np.uint8))
    with pytest.raises(DatasetError) as err:
        build_train_loader(dataclasses.replace(cfg, loader="dali"), 4, 0)
    msg = str(err.value)
    assert "1 unlabeled image(s) smaller than data.crop=16" in msg and "tiny.png" in msg
    assert "1 unlabeled image(s) have an alpha channel" in msg and "rgba.png" in msg
    assert "data.loader=torch" in msg
    with caplog.at_level(logging.INFO, logger="hybengine.data"):
        loader = build_train_loader(dataclasses.replace(cfg, loader="auto"), 4, 0)
    assert isinstance(loader, TrainLoader) and loader.unlabeled_k == 2 and "data.loader=auto" in caplog.text
    assert (next(loader)[1][2:] == 255).all()
