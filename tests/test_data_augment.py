"""Joint augmentation: image and mask stay aligned exactly; randomness depends on (seed, epoch, index)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from test_data_helpers import threshold_folder, write_pair

from hybengine.data import FolderDataset, build_train_loader
from hybengine.data.augment import (
    AugParams,
    FewLabelAug,
    WarpParams,
    apply_geometry,
    apply_image_warp,
    augment_pair,
    sample_params,
    sample_rng,
    warp_crop,
)

from tiny_run import REPO


def test_alignment_exact_with_all_augmentations(tmp_path):
    """Masks are image > 127; after crop/flip/rotate/jitter the classes are still separated by one
    threshold (jitter is increasing, so it keeps the order), every pixel, every sample."""
    cfg = threshold_folder(tmp_path, 6, 37, 53)  # odd, non-square sizes
    cfg.crop, cfg.intensity_jitter = 24, 0.3
    ds = FolderDataset(cfg, "train", train=True, seed=3)
    seen = set()
    for epoch, i in itertools.product(range(4), range(len(ds))):
        image, mask = ds[(epoch, i)]
        assert image.shape == (1, 24, 24) and image.dtype == torch.float32
        assert mask.shape == (24, 24) and mask.dtype == torch.int64
        assert 0 < mask.sum() < mask.numel()
        assert image[0][mask == 0].max() < image[0][mask == 1].min()
        p = sample_params(sample_rng(3, epoch, i), 37, 53, 24, True, 0.3)
        seen.add((p.flip_h, p.flip_v, p.k_rot))
    assert len(seen) >= 8  # the test saw flips and rotations, not only the identity


def test_geometry_matches_a_pixel_exact_reference(tmp_path):
    """16-bit image with all-distinct values and mask = value % 3: with jitter off, each output
    pixel's value tells where it came from, and its mask must be that source pixel's label."""
    h, w = 29, 41
    values = np.arange(h * w, dtype=np.uint16).reshape(h, w) * 7 + 11
    write_pair(tmp_path, "u", values, (values % 3).astype(np.uint8))
    from hybengine.config import DataConfig
    cfg = DataConfig(root=str(tmp_path), normalize="dtype", crop=16, intensity_jitter=0.0)
    ds = FolderDataset(cfg, "train", train=True)
    for epoch in range(12):
        image, mask = ds[(epoch, 0)]
        raw = np.rint((image[0].numpy().astype(np.float64) + 1) / 2 * 65535).astype(np.int64)
        assert set(np.unique(raw)) <= set(values.ravel().tolist())
        np.testing.assert_array_equal(raw % 3, mask.numpy())


def test_small_files_are_padded_reflect_and_ignore(tmp_path):
    cfg = threshold_folder(tmp_path, 1, 10, 30)
    cfg.crop = 16
    image, mask = FolderDataset(cfg, "train", train=True)[(0, 0)]
    assert image.shape == (1, 16, 16)
    assert (mask == 255).sum() == 16 * 6  # 6 padded rows (or columns after a rotation)
    valid = mask != 255
    assert image[0][valid & (mask == 0)].max() < image[0][valid & (mask == 1)].min()


def test_apply_geometry_same_for_image_and_mask():
    a = np.arange(30).reshape(5, 6)
    p = AugParams(1, 2, True, True, 3, 1.0, 0.0)
    out_img, out_mask = apply_geometry(a[None], p, 4)[0], apply_geometry(a, p, 4)
    np.testing.assert_array_equal(out_img, out_mask)
    np.testing.assert_array_equal(out_mask, np.rot90(a[1:5, 2:6][::-1, ::-1], 3))


def test_augment_off_is_a_centre_crop(tmp_path):
    cfg = threshold_folder(tmp_path, 2, 20, 30)
    cfg.crop, cfg.augment = 8, False
    ds = FolderDataset(cfg, "train", train=True)
    full, _ = ds.load(1)
    image, _ = ds[(5, 1)]
    np.testing.assert_array_equal(image.numpy(), full[:, 6:14, 11:19])


def test_same_seed_epoch_index_same_sample_any_order(tmp_path):
    cfg = threshold_folder(tmp_path, 5, 20, 20)
    cfg.crop = 12
    a, b = FolderDataset(cfg, "train", True, seed=1), FolderDataset(cfg, "train", True, seed=1)
    keys = [(e, i) for e in range(3) for i in range(5)]
    first = {k: a[k] for k in keys}
    for k in reversed(keys):  # another order, another object
        img, msk = b[k]
        assert torch.equal(img, first[k][0]) and torch.equal(msk, first[k][1])
    assert not torch.equal(a[(0, 0)][0], a[(1, 0)][0])  # epochs differ
    assert not torch.equal(a[(0, 0)][0], FolderDataset(cfg, "train", True, seed=2)[(0, 0)][0])


def test_workers_0_and_2_give_the_same_batches(tmp_path):
    cfg = threshold_folder(tmp_path, 7, 20, 24)
    cfg.crop = 16
    batches = {}
    for workers in (0, 2):
        cfg.num_workers = workers
        loader = build_train_loader(cfg, batch_size=3, seed=5)
        batches[workers] = [next(loader) for _ in range(6)]  # 18 items: crosses two epoch ends
        loader.close()
    for (x0, y0), (x2, y2) in zip(batches[0], batches[2], strict=True):
        assert torch.equal(x0, x2) and torch.equal(y0, y2)


def test_transpose_flips_form_equals_rotations():
    """The (transpose, flip_h, flip_v) form the DALI pipeline uses is the same transform as the
    torch path's flips + quarter turns, for all 16 parameter combinations."""
    from hybengine.data.augment import as_transpose_flips
    a = np.arange(49).reshape(7, 7)
    for fh, fv, k in itertools.product((False, True), (False, True), range(4)):
        p = AugParams(0, 0, fh, fv, k, 1.0, 0.0)
        t, h, v = as_transpose_flips(p)
        b = a.T if t else a
        b = b[:, ::-1] if h else b
        b = b[::-1] if v else b
        np.testing.assert_array_equal(apply_geometry(a, p, 7), b, err_msg=str((fh, fv, k)))


def test_uncached_dataset_gives_the_cached_samples(tmp_path):
    cfg = threshold_folder(tmp_path, 3, 20, 20)
    cfg.crop, cfg.normalize = 12, "percentile"
    cached, uncached = FolderDataset(cfg, "train", True), FolderDataset(cfg, "train", True, cache_limit=0)
    assert uncached._cache is None
    for key in [(0, 0), (1, 2), (4, 1)]:
        assert all(torch.equal(a, b) for a, b in zip(cached[key], uncached[key], strict=True))


# ---------------------------------------------------------------------------------------------
# Few-label augmentation (zoom, rotation, elastic, gamma, noise, blur)

FEW = FewLabelAug(scale=0.3, rotate=20, elastic=4, gamma=0.4, noise=0.1, blur=1.0)
WARPS = FewLabelAug(scale=0.3, rotate=20, elastic=4)


def _blobs(h=40, w=52, seed=0):
    """A mask of a few rectangles (classes 0..2) and an image equal to it: where the bilinear image is
    a whole number, the four pixels it mixed share one class, which the nearest mask must then show."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((h, w), np.int32)
    for k in (1, 2, 1, 2):
        t, left = rng.integers(0, h - 10), rng.integers(0, w - 10)
        mask[t:t + rng.integers(6, 14), left:left + rng.integers(6, 14)] = k
    return mask.astype(np.float32)[None], mask


def test_few_label_augmentation_is_off_by_default_and_draws_nothing_then():
    from hybengine.config import DataConfig
    assert FewLabelAug.from_config(DataConfig()) == FewLabelAug()
    image, mask = _blobs()
    a_rng, b_rng = sample_rng(0, 1, 2), sample_rng(0, 1, 2)
    a = augment_pair(image, mask, a_rng, 24, True, 0.1, 255)
    b = augment_pair(image, mask, b_rng, 24, True, 0.1, 255, FewLabelAug())
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert a_rng.random() == b_rng.random()  # the same draws were taken: earlier runs reproduce


def test_few_label_augmentation_is_seeded_per_sample():
    image, mask = _blobs()
    first = augment_pair(image, mask, sample_rng(4, 0, 1), 24, True, 0.1, 255, FEW)
    again = augment_pair(image, mask, sample_rng(4, 0, 1), 24, True, 0.1, 255, FEW)
    other = augment_pair(image, mask, sample_rng(4, 0, 2), 24, True, 0.1, 255, FEW)
    assert all(np.array_equal(x, y) for x, y in zip(first, again, strict=True))
    assert not np.array_equal(first[0], other[0])
    assert first[0].shape == (1, 24, 24) and first[0].dtype == np.float32 and first[1].shape == (24, 24)


def test_warps_keep_image_and_mask_aligned():
    image, mask = _blobs()
    changed = 0
    for i in range(12):
        rng = sample_rng(7, 0, i)
        out, m = augment_pair(image, mask, rng, 24, True, 0.0, 255, WARPS)
        assert set(np.unique(m)) <= {0, 1, 2, 255}  # nearest: no class is invented
        whole = (np.abs(out[0] - np.round(out[0])) < 1e-4) & (m != 255)  # 255: outside the file (image edge-repeated)
        assert whole.mean() > 0.6
        np.testing.assert_array_equal(np.round(out[0])[whole], m[whole])
        plain = augment_pair(image, mask, sample_rng(7, 0, i), 24, True, 0.0, 255)[1]
        changed += not np.array_equal(plain, m)
    assert changed >= 10  # the warp moved pixels, it did not fall back to the plain crop


def test_warp_marks_pixels_from_outside_the_file_as_ignored():
    image, mask = _blobs(24, 24)
    p = AugParams(0, 0, False, False, 0, 1.0, 0.0)
    _, m = warp_crop(image, mask, p, WarpParams(zoom=0.5), 24, 255)  # zoom out: the corners lie outside
    assert m[0, 0] == 255 and m[12, 12] != 255
    out, m = warp_crop(image, mask, p, WarpParams(), 24, 255)  # identity
    np.testing.assert_array_equal(m, mask)
    np.testing.assert_allclose(out, image, atol=1e-5)


def test_image_only_intensity_changes():
    x = np.linspace(-1, 1, 400, dtype=np.float32).reshape(1, 20, 20)
    g = apply_image_warp(x, WarpParams(gamma=2.0))
    assert g.min() == pytest.approx(-1) and g.max() == pytest.approx(1) and (np.diff(g.ravel()) >= 0).all()
    b = apply_image_warp(np.eye(20, dtype=np.float32)[None], WarpParams(blur=1.0))
    assert b.shape == (1, 20, 20) and b.max() < 0.5 and b.sum() == pytest.approx(20, rel=0.05)
    n = apply_image_warp(np.zeros((1, 64, 64), np.float32), WarpParams(noise=0.1, noise_seed=3))
    assert np.std(n) == pytest.approx(0.1, rel=0.1)
    np.testing.assert_array_equal(n, apply_image_warp(np.zeros((1, 64, 64), np.float32),
                                                      WarpParams(noise=0.1, noise_seed=3)))


def test_dataset_applies_the_config_preset(tmp_path):
    from hybengine.config import load_config
    cfg = threshold_folder(tmp_path, 3, 30, 30)
    preset = load_config(REPO / "configs/finetune/scratch_assay_oblique_few_labels.yaml").data
    for key in ("aug_scale", "aug_rotate", "aug_elastic", "aug_gamma", "aug_noise", "aug_blur"):
        assert getattr(preset, key) > 0
        setattr(cfg, key, getattr(preset, key))
    cfg.crop = 16
    image, mask = FolderDataset(cfg, "train", train=True, seed=1)[(0, 0)]
    assert image.shape == (1, 16, 16) and mask.shape == (16, 16)
    cfg.aug_scale = cfg.aug_rotate = cfg.aug_elastic = cfg.aug_gamma = cfg.aug_noise = cfg.aug_blur = 0
    plain, _ = FolderDataset(cfg, "train", train=True, seed=1)[(0, 0)]
    assert not torch.equal(image, plain)
