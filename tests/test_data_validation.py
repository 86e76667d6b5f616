"""Every bad input gives one DatasetError naming the file(s); one pass lists them all."""
from __future__ import annotations

import os

import numpy as np
import pytest
from test_data_helpers import threshold_folder, write_pair, write_png

from hybengine.config import DataConfig
from hybengine.data import DatasetError, FolderDataset, validate_folder

GOOD = np.full((16, 20), 100, np.uint8)
GOOD_MASK = np.zeros((16, 20), np.uint8)


def cfg_for(root, **kw) -> DataConfig:
    return DataConfig(root=str(root), **kw)


def problems_of(root, **kw) -> str:
    with pytest.raises(DatasetError) as e:
        validate_folder(root, "train", cfg_for(root, **kw))
    return str(e.value)


def test_good_folder_passes(tmp_path):
    mask_a = GOOD_MASK.copy()
    mask_a[2:5, 3:9] = 1  # a split needs some foreground (else 0/255 masks read as indices pass silently)
    write_pair(tmp_path, "a", GOOD, mask_a)
    write_pair(tmp_path, "b", GOOD, np.full((16, 20), 255, np.uint8))  # ignore_index is allowed
    (tmp_path / "train" / "images" / ".DS_Store").write_bytes(b"junk")  # dotfiles are skipped
    assert validate_folder(tmp_path, "train", cfg_for(tmp_path)) == ["a", "b"]


def test_missing_mask(tmp_path):
    write_pair(tmp_path, "a", GOOD, GOOD_MASK)
    write_png(tmp_path / "train" / "images" / "lonely.png", GOOD)
    msg = problems_of(tmp_path)
    assert "lonely.png" in msg and "no mask" in msg


def test_mask_without_image(tmp_path):
    write_pair(tmp_path, "a", GOOD, GOOD_MASK)
    write_png(tmp_path / "train" / "masks" / "orphan.png", GOOD_MASK)
    msg = problems_of(tmp_path)
    assert "orphan.png" in msg and "without an image" in msg


def test_size_mismatch(tmp_path):
    write_pair(tmp_path, "a", GOOD, np.zeros((16, 21), np.uint8))
    msg = problems_of(tmp_path)
    assert "a.png" in msg and "21x16" in msg and "20x16" in msg


def test_label_out_of_range(tmp_path):
    bad = GOOD_MASK.copy()
    bad[0, 0], bad[1, 1] = 3, 7
    write_pair(tmp_path, "a", GOOD, bad)
    msg = problems_of(tmp_path, num_classes=3)
    assert "masks/a.png" in msg and "[3, 7]" in msg and "0..2" in msg


def test_binary255_other_values(tmp_path):
    m = np.zeros((16, 20), np.uint8)
    m[:4] = 255
    write_pair(tmp_path, "ok", GOOD, m)
    m2 = m.copy()
    m2[5, 5] = 128
    write_pair(tmp_path, "gray", GOOD, m2)
    msg = problems_of(tmp_path, mask_format="binary255", num_classes=2)
    assert "gray.png" in msg and "128" in msg and "ok.png" not in msg


def test_corrupt_and_truncated_files(tmp_path):
    write_pair(tmp_path, "a", GOOD, GOOD_MASK)
    (tmp_path / "train" / "images" / "junk.png").write_bytes(b"this is not a png")
    write_png(tmp_path / "train" / "masks" / "junk.png", GOOD_MASK)
    big = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    write_pair(tmp_path, "cut", big, np.zeros((64, 64), np.uint8))
    full = (tmp_path / "train" / "images" / "cut.png").read_bytes()
    (tmp_path / "train" / "images" / "cut.png").write_bytes(full[: len(full) // 2])
    (tmp_path / "train" / "images" / "t.tif").write_bytes(b"II*\x00garbage")
    write_png(tmp_path / "train" / "masks" / "t.png", GOOD_MASK)
    msg = problems_of(tmp_path)
    for name in ("junk.png", "cut.png", "t.tif"):
        assert f"images/{name}" in msg
    assert "a.png" not in msg


def test_unsupported_extensions(tmp_path):
    write_pair(tmp_path, "a", GOOD, GOOD_MASK)
    (tmp_path / "train" / "images" / "b.bmp").write_bytes(b"BM")
    write_png(tmp_path / "train" / "masks" / "c.gif", GOOD_MASK)
    msg = problems_of(tmp_path)
    assert "b.bmp" in msg and "c.gif" in msg and "unsupported" in msg


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "train" / "images").mkdir(parents=True)
    (tmp_path / "train" / "masks").mkdir(parents=True)
    msg = problems_of(tmp_path)
    assert "empty image folder" in msg and "empty mask folder" in msg
    msg = problems_of(tmp_path / "nowhere")
    assert "image folder does not exist" in msg and "mask folder does not exist" in msg


def test_colour_mask_and_unknown_subset_stem(tmp_path):
    write_pair(tmp_path, "a", GOOD, GOOD_MASK)
    rgb = np.zeros((16, 20, 3), np.uint8)
    rgb[0, 0] = (1, 0, 0)
    write_pair(tmp_path, "rgb", GOOD, rgb)
    msg = problems_of(tmp_path, labeled_subset=["a", "rgb", "ghost"])
    assert "masks/rgb.png" in msg and "colour mask" in msg and "'ghost'" in msg


def test_one_pass_lists_every_problem(tmp_path):
    """Five different problems in one folder: one error, five lines, each with its file."""
    write_pair(tmp_path, "good", GOOD, GOOD_MASK)
    write_png(tmp_path / "train" / "images" / "nomask.png", GOOD)
    write_png(tmp_path / "train" / "masks" / "noimage.png", GOOD_MASK)
    write_pair(tmp_path, "size", GOOD, np.zeros((3, 3), np.uint8))
    write_pair(tmp_path, "label", GOOD, np.full((16, 20), 9, np.uint8))
    (tmp_path / "train" / "images" / "x.webp").write_bytes(b"RIFF")
    with pytest.raises(DatasetError) as e:
        validate_folder(tmp_path, "train", cfg_for(tmp_path))
    assert len(e.value.problems) == 5, str(e.value)
    msg = str(e.value)
    for name in ("nomask.png", "noimage.png", "masks/size.png", "masks/label.png", "x.webp"):
        assert name in msg
    assert "5 problems" in msg and "Fix, replace or remove" in msg


def test_labeled_subset_selects_train_split_only(tmp_path):
    cfg = threshold_folder(tmp_path, 4, 8, 8)
    threshold_folder(tmp_path, 2, 8, 8, split="test")
    cfg.labeled_subset = ["img002", "img000"]
    assert FolderDataset(cfg, "train", train=True).names == ["img000", "img002"]
    assert len(FolderDataset(cfg, "test", train=False)) == 2  # evaluation is never subset


def test_symlink_loop_is_a_problem_like_a_wrong_extension(tmp_path):  # issue item 8
    threshold_folder(tmp_path, 2, 8, 8)
    os.symlink("loop.png", tmp_path / "train" / "images" / "loop.png")  # points at itself
    os.symlink("missing.png", tmp_path / "train" / "masks" / "img000x.png")
    msg = problems_of(tmp_path, num_classes=2, normalize="dtype")
    assert "loop.png: not a readable image file" in msg and "img000x.png: not a readable mask file" in msg


def test_masks_without_foreground_name_binary255(tmp_path, caplog):  # issue item 6
    for i in range(2):
        mask = np.zeros((16, 20), np.uint8)
        mask[4:9, 5:12] = 255  # 0/255 binary masks, read with the default mask_format=index
        write_pair(tmp_path, f"m{i}", GOOD, mask)
    assert "set data.mask_format=binary255" in problems_of(tmp_path)
    assert validate_folder(tmp_path, "train", cfg_for(tmp_path, mask_format="binary255", num_classes=2)) == ["m0", "m1"]
    # every pixel ignore_index: refused too
    for i in range(2):
        write_png(tmp_path / "train" / "masks" / f"m{i}.png", np.full((16, 20), 255, np.uint8))
    assert "every mask pixel is data.ignore_index=255" in problems_of(tmp_path)
    # a label-budget subset is a sample: a warning there, not a refusal
    with caplog.at_level("WARNING", logger="hybengine.data"):
        assert validate_folder(tmp_path, "train", cfg_for(tmp_path, labeled_subset=["m0"])) == ["m0"]
    assert "binary255" in caplog.text
