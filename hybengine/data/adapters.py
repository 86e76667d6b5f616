"""Dataset adapters: public segmentation layouts -> the engine's folder format.

    python -m hybengine.data.adapters LAYOUT SRC DST [--test-fraction 0.2] [--seed 0]

writes DST/<split>/images/<stem>.png and DST/<split>/masks/<stem>.png (8-bit class-index PNG) and
DST/dataset_info.json (classes, counts, the data.* settings to use). Layouts, as distributed:
| layout     | images                                                  | masks -> classes                     |
|------------|---------------------------------------------------------|--------------------------------------|
- isic2018: ISIC2018_Task1-2_<Split>_Input/ISIC_*.jpg; masks ISIC2018_Task1_<Split>_GroundTruth/
  ISIC_*_segmentation.png, 0/255 -> lesion 1.
- ph2: [PH2 Dataset images/]IMD*/IMD*_Dermoscopic_Image/IMD*.bmp; masks IMD*/IMD*_lesion/IMD*_lesion.bmp,
  > 0 -> lesion 1.
- jsrt_scr: JSRT *.IMG (2048x2048, 12-bit big-endian raw) anywhere under SRC; SCR masks
  .../left lung/*.gif and .../right lung/*.gif (1024x1024), union -> lung 1.
- montgomery: CXR_png/MCUCXR_*.png; ManualMask/leftMask + rightMask, union > 0 -> lung 1.
- shenzhen: CXR_png/CHNCXR_*.png; mask/CHNCXR_*_mask.png, > 0 -> lung 1 (images without a mask skipped).
- nnunet: dataset.json, imagesTr/<case>_0000.png (+ _0001, _0002 stacked as RGB), labelsTr/<case>.png
  with the labels of dataset.json (2-D files only: .png, .tif, .jpg).

Splits: ISIC's own (Training -> train; Validation and Test -> test, where their ground truth is
present); every other layout, or ISIC with only Training, is split by a seeded permutation of the
sorted stems (`test_fraction` of them, at least one, to test). JSRT images are halved to the SCR
masks' 1024x1024 (2x2 mean) and inverted (JSRT stores larger values for darker film, so bones come out
dark otherwise); they are written as 16-bit PNG. Images that already are PNG/JPEG keep their pixels.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from hybengine.data.errors import DatasetError

JSRT_SIDE = 2048  # JSRT .IMG: 2048 x 2048 pixels, 12 bits stored in big-endian uint16
JSRT_MAX = 4095


@dataclass
class Item:
    stem: str
    load_image: Callable[[], np.ndarray]  # (H, W) or (H, W, 3), uint8 or uint16
    load_mask: Callable[[], np.ndarray]  # (H, W) class indices, uint8
    split: str | None = None  # fixed by the layout, or None: decided by the seeded split


@dataclass
class Layout:
    items: Callable[[Path], list[Item]]
    classes: list[str]
    image_channels: int


def _pil(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        im.load()
        if im.mode in ("P", "CMYK", "RGBA", "LA"):
            im = im.convert("RGB")
        elif im.mode == "1":
            im = im.convert("L")
        return np.asarray(im)


def _binary(*paths: Path) -> Callable[[], np.ndarray]:
    """Mask loader: union of the files' non-zero pixels -> class 1."""
    def load() -> np.ndarray:
        out = None
        for p in paths:
            m = _pil(p)
            m = m.max(axis=2) if m.ndim == 3 else m
            out = (m > 0) if out is None else (out | (m > 0))
        return out.astype(np.uint8)
    return load


def _require(found: list, what: str, src: Path) -> list:
    if not found:
        raise DatasetError(f"{src}: no {what} found; is this the right layout and folder?")
    return found


# ---- layouts ----------------------------------------------------------------------------------


def isic2018_items(src: Path) -> list[Item]:
    items = []
    for split_name, split in (("Training", "train"), ("Validation", "test"), ("Test", "test")):
        img_dir = src / f"ISIC2018_Task1-2_{split_name}_Input"
        gt_dir = src / f"ISIC2018_Task1_{split_name}_GroundTruth"
        if not img_dir.is_dir() or not gt_dir.is_dir():
            continue
        for img in sorted(img_dir.glob("ISIC_*.jpg")):
            gt = gt_dir / f"{img.stem}_segmentation.png"
            if gt.is_file():
                items.append(Item(img.stem, lambda p=img: _pil(p), _binary(gt), split))
    items = _require(items, "ISIC2018_Task1-2_<Split>_Input/ISIC_*.jpg with ground truth", src)
    if not any(i.split == "test" for i in items):  # only Training has masks: seeded split
        for i in items:
            i.split = None
    return items


def ph2_items(src: Path) -> list[Item]:
    root = src / "PH2 Dataset images" if (src / "PH2 Dataset images").is_dir() else src
    items = []
    for case in sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("IMD")):
        img = case / f"{case.name}_Dermoscopic_Image" / f"{case.name}.bmp"
        gt = case / f"{case.name}_lesion" / f"{case.name}_lesion.bmp"
        if img.is_file() and gt.is_file():
            items.append(Item(case.name, lambda p=img: _pil(p), _binary(gt)))
    return _require(items, "IMD*/IMD*_Dermoscopic_Image/IMD*.bmp with IMD*_lesion", src)


def read_jsrt(path: Path) -> np.ndarray:
    """JSRT .IMG -> (1024, 1024) uint16: 2x2 mean to the SCR mask size, inverted so that bone is bright."""
    raw = np.fromfile(path, dtype=">u2")
    if raw.size != JSRT_SIDE * JSRT_SIDE:
        raise DatasetError(f"{path}: {raw.size} pixels, expected {JSRT_SIDE}x{JSRT_SIDE} (JSRT .IMG)")
    img = raw.reshape(JSRT_SIDE, JSRT_SIDE).astype(np.float32).clip(0, JSRT_MAX)
    half = img.reshape(JSRT_SIDE // 2, 2, JSRT_SIDE // 2, 2).mean(axis=(1, 3))
    return np.round((JSRT_MAX - half) * (65535 / JSRT_MAX)).astype(np.uint16)


def jsrt_scr_items(src: Path) -> list[Item]:
    left = {p.stem: p for p in src.rglob("*.gif") if p.parent.name == "left lung"}
    right = {p.stem: p for p in src.rglob("*.gif") if p.parent.name == "right lung"}
    items = [Item(img.stem, lambda p=img: read_jsrt(p), _binary(left[img.stem], right[img.stem]))
             for img in sorted(src.rglob("*.IMG")) if img.stem in left and img.stem in right]
    return _require(items, "JSRT *.IMG files with SCR 'left lung' and 'right lung' masks", src)


def montgomery_items(src: Path) -> list[Item]:
    items = []
    for img in sorted((src / "CXR_png").glob("MCUCXR_*.png")):
        lm, rm = src / "ManualMask" / "leftMask" / img.name, src / "ManualMask" / "rightMask" / img.name
        if lm.is_file() and rm.is_file():
            items.append(Item(img.stem, lambda p=img: _pil(p), _binary(lm, rm)))
    return _require(items, "CXR_png/MCUCXR_*.png with ManualMask/leftMask and rightMask", src)


def shenzhen_items(src: Path) -> list[Item]:
    items = []
    for img in sorted((src / "CXR_png").glob("CHNCXR_*.png")):
        gt = src / "mask" / f"{img.stem}_mask.png"
        if gt.is_file():
            items.append(Item(img.stem, lambda p=img: _pil(p), _binary(gt)))
    return _require(items, "CXR_png/CHNCXR_*.png with mask/CHNCXR_*_mask.png", src)


def nnunet_items(src: Path) -> list[Item]:
    info = nnunet_info(src)
    ending, n_ch = info["file_ending"], len(info["channel_names"])
    items = []
    for label in sorted((src / "labelsTr").glob(f"*{ending}")):
        case = label.name[: -len(ending)]
        chans = [src / "imagesTr" / f"{case}_{c:04d}{ending}" for c in range(n_ch)]
        if not all(p.is_file() for p in chans):
            raise DatasetError(f"{label}: missing image channel file(s) "
                               f"{[p.name for p in chans if not p.is_file()]} in {src / 'imagesTr'}")
        items.append(Item(case, lambda ps=chans: _stack_channels(ps), lambda p=label: _pil(p).astype(np.uint8)))
    return _require(items, f"labelsTr/*{ending} with imagesTr/<case>_0000{ending}", src)


def nnunet_info(src: Path) -> dict:
    path = src / "dataset.json"
    if not path.is_file():
        raise DatasetError(f"{src}: no dataset.json (nnU-Net raw layout: dataset.json, imagesTr/, labelsTr/)")
    info = json.loads(path.read_text())
    ending = info.get("file_ending", "")
    if ending not in (".png", ".tif", ".tiff", ".jpg"):
        raise DatasetError(f"{path}: file_ending {ending!r}: only 2-D image files (.png, .tif, .jpg) are "
                           "supported here (NIfTI volumes need slicing first)")
    if len(info.get("channel_names", {})) not in (1, 3):
        raise DatasetError(f"{path}: {len(info.get('channel_names', {}))} channels; 1 (gray) or 3 (RGB) supported")
    labels = info.get("labels", {})
    if sorted(labels.values()) != list(range(len(labels))) or len(labels) < 2:
        raise DatasetError(f"{path}: labels {labels} must map names to 0..K-1 (region labels are not supported)")
    return info


def _stack_channels(paths: list[Path]) -> np.ndarray:
    chans = [_pil(p) for p in paths]
    return chans[0] if len(chans) == 1 else np.stack(chans, axis=-1)


def _nnunet_classes(src: Path) -> list[str]:
    labels = nnunet_info(src)["labels"]
    return [name for name, _ in sorted(labels.items(), key=lambda kv: kv[1])]


LAYOUTS: dict[str, Layout] = {
    "isic2018": Layout(isic2018_items, ["background", "lesion"], 3),
    "ph2": Layout(ph2_items, ["background", "lesion"], 3),
    "jsrt_scr": Layout(jsrt_scr_items, ["background", "lung"], 1),
    "montgomery": Layout(montgomery_items, ["background", "lung"], 1),
    "shenzhen": Layout(shenzhen_items, ["background", "lung"], 1),
    "nnunet": Layout(nnunet_items, [], 0),  # classes and channels from dataset.json
}


# ---- writing ----------------------------------------------------------------------------------


def assign_splits(items: list[Item], test_fraction: float, seed: int) -> None:
    """Items without a layout split: a seeded permutation of the sorted stems; at least one to test."""
    free = sorted((i for i in items if i.split is None), key=lambda i: i.stem)
    if not free:
        return
    n_test = min(len(free) - 1, max(1, round(test_fraction * len(free)))) if len(free) > 1 else 0
    perm = np.random.default_rng([4, seed]).permutation(len(free))
    test = set(perm[:n_test].tolist())
    for j, item in enumerate(free):
        item.split = "test" if j in test else "train"


def _safe_stem(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", stem)


def shrink(image: np.ndarray, mask: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """Scales down so that the longer side is at most max_side (image: box filter; mask: nearest)."""
    h, w = mask.shape
    if max_side <= 0 or max(h, w) <= max_side:
        return image, mask
    size = (max(1, round(w * max_side / max(h, w))), max(1, round(h * max_side / max(h, w))))  # PIL: (W, H)
    if image.dtype == np.uint16:  # PIL resizes 16-bit data as 32-bit integers ("I" mode)
        small = np.asarray(Image.fromarray(image.astype(np.int32), mode="I").resize(size, Image.BOX))
        image = small.clip(0, 65535).astype(np.uint16)
    else:
        image = np.asarray(Image.fromarray(image).resize(size, Image.BOX))
    return image, np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST))


def convert(layout: str, src: str | Path, dst: str | Path, test_fraction: float = 0.2, seed: int = 0,
            max_side: int = 0) -> dict:
    """Converts SRC (in `layout`) into the engine's folder format under DST; returns dataset_info.
    max_side > 0 scales larger images (and masks, nearest) down to that longer side."""
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown layout {layout!r}; choose one of: {', '.join(LAYOUTS)}")
    if not 0 < test_fraction < 1:
        raise DatasetError(f"test_fraction={test_fraction}: must be in (0, 1)")
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise DatasetError(f"{src}: no such folder")
    spec = LAYOUTS[layout]
    classes = spec.classes or _nnunet_classes(src)
    items = spec.items(src)
    assign_splits(items, test_fraction, seed)
    counts: dict[str, int] = {}
    channels = set()
    for item in items:
        image, mask = item.load_image(), item.load_mask()
        if image.shape[:2] != mask.shape:
            raise DatasetError(f"{layout} item {item.stem}: image {image.shape[:2]} and mask {mask.shape} differ")
        if int(mask.max()) >= len(classes):
            raise DatasetError(f"{layout} item {item.stem}: mask value {int(mask.max())} >= {len(classes)} classes")
        image, mask = shrink(image, mask, max_side)
        channels.add(1 if image.ndim == 2 else 3)
        for sub in ("images", "masks"):
            (dst / item.split / sub).mkdir(parents=True, exist_ok=True)
        stem = _safe_stem(item.stem)
        Image.fromarray(image).save(dst / item.split / "images" / f"{stem}.png")
        Image.fromarray(mask.astype(np.uint8), mode="L").save(dst / item.split / "masks" / f"{stem}.png")
        counts[item.split] = counts.get(item.split, 0) + 1
    image_channels = spec.image_channels or max(channels)
    info = {"layout": layout, "source": str(src), "classes": classes, "counts": counts, "max_side": max_side,
            "config": {"data.root": str(dst), "data.num_classes": len(classes), "data.image_channels": image_channels,
                       "data.mask_format": "index"}}
    (dst / "dataset_info.json").write_text(json.dumps(info, indent=2))
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("layout", choices=list(LAYOUTS))
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-side", type=int, default=0, help="scale larger images down to this longer side")
    args = p.parse_args(argv)
    try:
        info = convert(args.layout, args.src, args.dst, args.test_fraction, args.seed, args.max_side)
    except DatasetError as e:
        print(f"adapter error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
