"""Each dataset adapter on a small folder built here in that layout: files land in the engine's format."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hybengine.config import DataConfig
from hybengine.data import DatasetError, validate_folder
from hybengine.data.adapters import JSRT_SIDE, assign_splits, convert, main, read_jsrt
from hybengine.data.image_io import read_mask


def _img(path, shape, mode="RGB", value=None, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    arr = rng.integers(0, 255, shape, dtype=np.uint8) if value is None else value
    Image.fromarray(arr, mode=mode).save(path, format=fmt)


def _disc(h, w, value=255):
    yy, xx = np.mgrid[:h, :w]
    return (((yy - h / 2) ** 2 + (xx - w / 2) ** 2) < (min(h, w) / 3) ** 2).astype(np.uint8) * value


def _check(dst, num_classes, channels, n_total):
    info = json.loads((dst / "dataset_info.json").read_text())
    cfg = DataConfig(root=str(dst), num_classes=num_classes, image_channels=channels)
    stems = validate_folder(dst, "train", cfg) + validate_folder(dst, "test", cfg)
    assert len(stems) == n_total == sum(info["counts"].values())
    assert info["config"]["data.num_classes"] == num_classes and info["config"]["data.image_channels"] == channels
    for split in ("train", "test"):
        for m in (dst / split / "masks").iterdir():
            assert set(np.unique(read_mask(m, "index"))) <= set(range(num_classes))
    return info


def test_isic2018(tmp_path):
    src = tmp_path / "isic"
    for split, n in (("Training", 3), ("Validation", 1)):
        for i in range(n):
            stem = f"ISIC_{int(split == 'Validation')}{i:06d}"
            _img(src / f"ISIC2018_Task1-2_{split}_Input" / f"{stem}.jpg", (20, 30, 3))
            gt = src / f"ISIC2018_Task1_{split}_GroundTruth" / f"{stem}_segmentation.png"
            _img(gt, (20, 30), "L", _disc(20, 30))
    info = convert("isic2018", src, tmp_path / "out")
    _check(tmp_path / "out", 2, 3, 4)
    assert info["counts"] == {"train": 3, "test": 1}  # ISIC's own Training / Validation split
    mask = read_mask(tmp_path / "out/test/masks/ISIC_1000000.png", "index")
    assert mask.max() == 1 and mask[10, 15] == 1 and mask[0, 0] == 0


def test_ph2(tmp_path):
    root = tmp_path / "ph2" / "PH2 Dataset images"
    for case in ("IMD002", "IMD003", "IMD004"):
        _img(root / case / f"{case}_Dermoscopic_Image" / f"{case}.bmp", (16, 18, 3), fmt="BMP")
        _img(root / case / f"{case}_lesion" / f"{case}_lesion.bmp", (16, 18), "L", _disc(16, 18, 1), fmt="BMP")
    info = convert("ph2", tmp_path / "ph2", tmp_path / "out", test_fraction=0.34)
    _check(tmp_path / "out", 2, 3, 3)
    assert info["counts"] == {"train": 2, "test": 1}


def test_jsrt_scr(tmp_path):
    src = tmp_path / "jsrt"
    (src / "images").mkdir(parents=True)
    raw = np.full((JSRT_SIDE, JSRT_SIDE), 1000, dtype=">u2")
    raw[:2, :2] = [[0, 4095], [4095, 0]]  # one 2x2 block averages to 2047.5
    for name in ("JPCLN001", "JPCNN002"):
        raw.tofile(src / "images" / f"{name}.IMG")
        half = np.zeros((1024, 1024), np.uint8)
        half[100:300, 100:200] = 255
        _img(src / "scr" / "masks" / "left lung" / f"{name}.gif", (1024, 1024), "L", half, fmt="GIF")
        right = src / "scr" / "masks" / "right lung" / f"{name}.gif"
        _img(right, (1024, 1024), "L", half[:, ::-1].copy(), fmt="GIF")
    img = read_jsrt(src / "images" / "JPCLN001.IMG")
    assert img.shape == (1024, 1024) and img.dtype == np.uint16
    assert abs(int(img[0, 0]) - (4095 - 2047.5) * 65535 / 4095) <= 1  # 2x2 mean, inverted, 12 -> 16 bits
    assert abs(int(img[5, 5]) - 3095 * 65535 / 4095) <= 1
    convert("jsrt_scr", src, tmp_path / "out")
    _check(tmp_path / "out", 2, 1, 2)
    convert("jsrt_scr", src, tmp_path / "small", max_side=256)
    _check(tmp_path / "small", 2, 1, 2)
    small = next((tmp_path / "small").glob("*/images/JPCNN002.png"))
    assert Image.open(small).size == (256, 256) and np.asarray(Image.open(small)).dtype == np.uint16
    split = "train" if (tmp_path / "out/train/masks/JPCLN001.png").is_file() else "test"
    mask = read_mask(tmp_path / f"out/{split}/masks/JPCLN001.png", "index")
    assert mask[150, 150] == 1 and mask[150, 1024 - 150] == 1 and mask[500, 500] == 0  # both lungs
    (src / "images" / "JPCLN003.IMG").write_bytes(b"\0" * 10)
    gif = (src / "scr/masks/left lung/JPCLN001.gif").read_bytes()
    (src / "scr/masks/left lung/JPCLN003.gif").write_bytes(gif)
    (src / "scr/masks/right lung/JPCLN003.gif").write_bytes(gif)
    with pytest.raises(DatasetError, match="expected 2048x2048"):
        convert("jsrt_scr", src, tmp_path / "out2")


def test_montgomery_and_shenzhen(tmp_path):
    mc = tmp_path / "mc"
    for i in range(3):
        name = f"MCUCXR_{i:04d}_0.png"
        _img(mc / "CXR_png" / name, (24, 20), "L")
        left = np.zeros((24, 20), np.uint8)
        left[5:15, 2:8] = 255
        _img(mc / "ManualMask" / "leftMask" / name, (24, 20), "L", left)
        _img(mc / "ManualMask" / "rightMask" / name, (24, 20), "L", left[:, ::-1].copy())
    convert("montgomery", mc, tmp_path / "out_mc")
    _check(tmp_path / "out_mc", 2, 1, 3)

    sz = tmp_path / "sz"
    for i in range(4):
        _img(sz / "CXR_png" / f"CHNCXR_{i:04d}_0.png", (24, 20), "L")
        if i < 3:  # the fourth image has no mask: skipped
            _img(sz / "mask" / f"CHNCXR_{i:04d}_0_mask.png", (24, 20), "L", _disc(24, 20))
    info = convert("shenzhen", sz, tmp_path / "out_sz")
    _check(tmp_path / "out_sz", 2, 1, 3)
    assert sum(info["counts"].values()) == 3


def test_nnunet_raw(tmp_path):
    src = tmp_path / "Dataset001_Toy"
    (src / "dataset.json").parent.mkdir(parents=True)
    (src / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "R", "1": "G", "2": "B"}, "labels": {"background": 0, "a": 1, "b": 2},
        "numTraining": 3, "file_ending": ".png"}))
    for case in ("toy_000", "toy_001", "toy_002"):
        for c in range(3):
            _img(src / "imagesTr" / f"{case}_{c:04d}.png", (12, 16), "L")
        lab = np.zeros((12, 16), np.uint8)
        lab[2:5, 2:5], lab[6:9, 8:12] = 1, 2
        _img(src / "labelsTr" / f"{case}.png", (12, 16), "L", lab)
    info = convert("nnunet", src, tmp_path / "out")
    _check(tmp_path / "out", 3, 3, 3)
    assert info["classes"] == ["background", "a", "b"]
    img = np.asarray(Image.open(next((tmp_path / "out" / "train" / "images").iterdir())))
    assert img.shape == (12, 16, 3)  # three channel files stacked into RGB
    (src / "imagesTr" / "toy_001_0002.png").unlink()
    with pytest.raises(DatasetError, match="missing image channel"):
        convert("nnunet", src, tmp_path / "out2")
    (src / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0, "x": 1},
                                                  "file_ending": ".nii.gz"}))
    with pytest.raises(DatasetError, match="NIfTI"):
        convert("nnunet", src, tmp_path / "out3")


def test_errors_and_split_rules(tmp_path, capsys):
    with pytest.raises(DatasetError, match="no CXR_png"):
        convert("shenzhen", tmp_path, tmp_path / "o")
    assert main(["ph2", str(tmp_path / "missing"), str(tmp_path / "o")]) == 2
    assert "no such folder" in capsys.readouterr().err

    class It:
        def __init__(self, s):
            self.stem, self.split = s, None
    items = [It(f"s{i}") for i in range(10)]
    assign_splits(items, 0.2, seed=0)
    again = [It(f"s{i}") for i in range(10)]
    assign_splits(again, 0.2, seed=0)
    assert [i.split for i in items] == [i.split for i in again] and sum(i.split == "test" for i in items) == 2


@pytest.mark.parametrize("pair", ["isic_to_ph2", "jsrt_to_montgomery", "jsrt_to_shenzhen"])
def test_pair_configs_load(pair):
    from hybengine.config import load_config
    from hybengine.experiment.pipeline import load_experiment

    root = Path(__file__).resolve().parents[1] / "configs" / "pairs" / pair
    spec = load_experiment(root / "experiment.yaml")
    pre = load_config(spec["pretrain"]["config"], spec["pretrain"].get("overrides", []))
    ft = load_config(spec["finetune"]["config"], spec["finetune"].get("overrides", []))
    assert pre.data.num_classes == ft.data.num_classes == 2 and pre.data.image_channels == ft.data.image_channels
    assert ft.sweep.budgets and pre.data.root != ft.data.root
