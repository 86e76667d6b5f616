"""A folder of images and class-index masks, checked in one pass, and its torch Dataset.

Layout: `<root>/<split>/images/<stem>.<png|jpg|jpeg|tif|tiff>` and `<root>/<split>/masks/<stem>.png`;
an image and its mask share the stem. Dotfiles (.DS_Store, .gitkeep) and sub-folders are skipped.

`validate_folder` reads every selected file once and raises one `DatasetError` that lists every
problem (missing mask, mask without image, size mismatch, label out of range, unreadable file,
unsupported extension, empty folder, unknown stem in `labeled_subset`). `FolderDataset` runs the
same scan, keeps the decoded, normalised arrays in memory when they are small (the demo data is
about 7 MB decoded), and serves augmented training crops or whole evaluation images.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hybengine.config import DataConfig
from hybengine.data.augment import FewLabelAug, augment_pair, sample_rng
from hybengine.data.errors import DatasetError
from hybengine.data.image_io import (
    IMAGE_EXTENSIONS,
    MASK_EXTENSIONS,
    FileProblem,
    NormParams,
    apply_norm,
    as_channels,
    label_problems,
    norm_params,
    png_header,
    read_image,
    read_mask,
    read_raw,
)

log = logging.getLogger("hybengine.data")
CACHE_LIMIT_BYTES = 512 * 2**20  # decoded arrays kept in memory up to this size, else read per item
ADVICE = ("Fix, replace or remove the files listed (an image and its mask share the file stem; masks are "
          "single-channel class-index PNG), or point data.root / data.labeled_subset at the right data.")


@dataclass(frozen=True)
class FileInfo:
    """What the scan learnt about one image+mask pair (the DALI pipeline plans from it)."""
    height: int
    width: int
    bits: int  # 8 or 16, of the image file
    file_channels: int  # 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA
    norm: NormParams  # this image's normalisation
    mask_gray8_png: bool  # the mask is a plain 8-bit grayscale PNG (no palette, no 16 bits)

    @classmethod
    def of_image(cls, arr: np.ndarray, norm: NormParams, mask_gray8_png: bool) -> FileInfo:
        """The info of a decoded image file `arr` ((H, W) or (H, W, C), as read_raw gives it)."""
        return cls(arr.shape[0], arr.shape[1], 8 * arr.dtype.itemsize, 1 if arr.ndim == 2 else arr.shape[2],
                   norm, mask_gray8_png)


@dataclass
class FolderScan:
    """What one pass over a split found: the usable stems, their files, and decoded arrays."""
    stems: list[str]
    images: dict[str, Path]
    masks: dict[str, Path]
    info: dict[str, FileInfo]
    cache: dict[str, tuple[np.ndarray, np.ndarray]] | None = field(default=None)  # stem -> (image, mask)


@dataclass
class LabelCounts:
    """Pixels per kind over a split's masks: a split with no foreground class learns nothing to segment."""
    foreground: int = 0  # classes >= 1 (not ignore_index)
    ignored: int = 0  # ignore_index
    total: int = 0

    def add(self, mask: np.ndarray, ignore_index: int) -> None:
        ignored = int(np.count_nonzero(mask == ignore_index))
        self.ignored += ignored
        self.foreground += int(np.count_nonzero(mask >= 1)) - (ignored if ignore_index >= 1 else 0)
        self.total += mask.size

    def problems(self, where: Path, cfg: DataConfig, strict: bool = True) -> list[str]:
        """No foreground class in any mask. Refused (strict) or warned: masks that are ignore_index
        throughout, and 0/255 masks read as class indices (every 255 is ignore_index, so the model never
        sees foreground). Background only otherwise: a warning."""
        if not self.total or self.foreground:
            return []
        found = []
        if self.ignored == self.total:
            found.append(f"{where}: every mask pixel is data.ignore_index={cfg.ignore_index}, so nothing would "
                         "be learnt or scored; if 255 marks the foreground of 0/255 masks, set "
                         "data.mask_format=binary255")
        elif self.ignored and cfg.mask_format == "index":
            found.append(f"{where}: no mask holds a class >= 1, and {100 * self.ignored / self.total:.1f}% of "
                         f"pixels are {cfg.ignore_index} (data.ignore_index, left out of the loss): these look "
                         "like 0/255 binary masks; set data.mask_format=binary255 (and data.num_classes=2)")
        else:
            log.warning("%s: no mask holds a class >= 1 (foreground); the model will learn background only", where)
        if found and not strict:
            log.warning("%s", found[0])
            return []
        return found


def _list_files(folder: Path, extensions: tuple[str, ...], kind: str, problems: list[str]) -> dict[str, Path]:
    """stem -> file, reporting a missing or empty folder, unsupported extensions and duplicate stems."""
    if not folder.is_dir():
        problems.append(f"{folder}: {kind} folder does not exist")
        return {}
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.is_dir():
            continue
        if not path.is_file():  # a link to nothing, a link loop, a socket: as bad as a wrong extension
            problems.append(f"{path}: not a readable {kind} file (a broken symbolic link, a link loop or a "
                            "special file); fix or remove it")
            continue
        if path.suffix.lower() not in extensions:
            problems.append(f"{path}: unsupported {kind} extension '{path.suffix}' "
                            f"(allowed: {' '.join(extensions)})")
        elif path.stem in found:
            problems.append(f"{path}: same stem as {found[path.stem].name}; keep one {kind} file per stem")
        else:
            found[path.stem] = path
    if not found:
        problems.append(f"{folder}: empty {kind} folder (no {' '.join(extensions)} files)")
    return found


def scan_folder(root: str | Path, split: str, cfg: DataConfig, cache_limit: int = 0) -> FolderScan:
    """The one pass behind `validate_folder` and `FolderDataset`; raises DatasetError listing all
    problems. `cfg.labeled_subset` applies to the training split only (evaluation always uses the
    whole test split). With cache_limit > 0, the normalised arrays are kept if they fit."""
    base = Path(root) / split
    problems: list[str] = []
    images = _list_files(base / "images", IMAGE_EXTENSIONS, "image", problems)
    masks = _list_files(base / "masks", MASK_EXTENSIONS, "mask", problems)
    for stem in sorted(images.keys() - masks.keys()):
        if masks or (base / "masks").is_dir():
            problems.append(f"{images[stem]}: no mask {base / 'masks' / (stem + '.png')}")
    for stem in sorted(masks.keys() - images.keys()):
        if images or (base / "images").is_dir():
            problems.append(f"{masks[stem]}: mask without an image of the same stem in {base / 'images'}")
    stems = sorted(images.keys() & masks.keys())

    if cfg.labeled_subset and split == cfg.train_split:
        unknown = sorted(set(cfg.labeled_subset) - set(stems))
        for stem in unknown:
            problems.append(f"data.labeled_subset names '{stem}', which is not an image+mask pair in {base}")
        stems = sorted(set(cfg.labeled_subset) & set(stems))

    cache: dict[str, tuple[np.ndarray, np.ndarray]] | None = {} if cache_limit > 0 else None
    labels = LabelCounts()
    cached_bytes = 0
    info: dict[str, FileInfo] = {}
    for stem in stems:
        image = mask = None
        try:
            arr = read_raw(images[stem])
            raw, dtype_max = as_channels(arr, cfg.image_channels)
            norm = norm_params(raw, cfg.normalize, dtype_max)
            image = apply_norm(raw, norm)
        except FileProblem as e:
            problems.append(f"{images[stem]}: {e}")
        try:
            mask = read_mask(masks[stem], cfg.mask_format)
            bad = label_problems(mask, cfg.num_classes, cfg.ignore_index, cfg.mask_format)
            if bad:
                problems.append(f"{masks[stem]}: {bad}")
            labels.add(mask, cfg.ignore_index)
        except FileProblem as e:
            problems.append(f"{masks[stem]}: {e}")
        if image is not None and mask is not None and image.shape[1:] != mask.shape:
            problems.append(f"{masks[stem]}: mask size {mask.shape[1]}x{mask.shape[0]} (WxH) differs from "
                            f"image {images[stem].name} size {image.shape[2]}x{image.shape[1]}")
        if image is not None and mask is not None:
            info[stem] = FileInfo.of_image(arr, norm, png_header(masks[stem]) == (8, 0))
        if cache is not None and image is not None and mask is not None:
            cached_bytes += image.nbytes + mask.nbytes
            if cached_bytes <= cache_limit:
                cache[stem] = (image, mask)
            else:
                cache = None  # too large to keep: items are decoded on demand
    if not problems:  # a label-budget subset is a sample of the split: there a warning, not a refusal
        problems += labels.problems(base / "masks", cfg, strict=not (cfg.labeled_subset and split == cfg.train_split))
    if problems:
        raise DatasetError.listing(f"dataset {base}", problems, ADVICE)
    return FolderScan(stems, {s: images[s] for s in stems}, {s: masks[s] for s in stems}, info, cache)


def validate_folder(root: str | Path, split: str, cfg: DataConfig) -> list[str]:
    """Checks `<root>/<split>` in one pass; returns the sorted usable stems or raises DatasetError."""
    return scan_folder(root, split, cfg).stems


class FolderDataset(torch.utils.data.Dataset):
    """Images and masks of one split.

    train=True: item `i` or `(epoch, i)` -> (image float32 (I, crop, crop), mask int64 (crop, crop)),
    jointly augmented with a generator drawn from (seed, epoch, i) alone, so any worker, rank or
    order gives the same sample. An int key uses `self.epoch` (see `set_epoch`); the loaders pass
    (epoch, i) so that worker processes never need the epoch broadcast to them.
    train=False: item `i` -> (image (I, H, W), mask (H, W), name), whole and unaugmented.
    """

    def __init__(self, cfg: DataConfig, split: str, train: bool, seed: int = 0,
                 cache_limit: int = CACHE_LIMIT_BYTES):
        self.cfg, self.split, self.train, self.seed = cfg, split, train, seed
        self.epoch = 0
        scan = scan_folder(cfg.root, split, cfg, cache_limit=cache_limit)
        self.names: list[str] = scan.stems
        self.scan = scan
        self._images, self._masks, self._cache = scan.images, scan.masks, scan.cache

    def __len__(self) -> int:
        return len(self.names)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Normalised image float32 (I, H, W) and mask int32 (H, W) of item i, unaugmented."""
        stem = self.names[i]
        if self._cache is not None:
            return self._cache[stem]
        try:  # normalised with the parameters the start-up scan measured (no percentiles again)
            raw, _ = read_image(self._images[stem], self.cfg.image_channels)
            mask = read_mask(self._masks[stem], self.cfg.mask_format)
            return apply_norm(raw, self.scan.info[stem].norm), mask
        except FileProblem as e:  # the file changed after the start-up check
            raise DatasetError(f"{self._images[stem]} or its mask: {e}") from None

    def __getitem__(self, key: int | tuple[int, int]):
        epoch, i = key if isinstance(key, tuple) else (self.epoch, key)
        image, mask = self.load(i)
        if not self.train:
            return torch.from_numpy(image.copy()), torch.from_numpy(mask.astype(np.int64)), self.names[i]
        c = self.cfg
        rng = sample_rng(self.seed, epoch, i)
        image, mask = augment_pair(image, mask, rng, c.crop, c.augment, c.intensity_jitter, c.ignore_index,
                                   FewLabelAug.from_config(c))
        return torch.from_numpy(image), torch.from_numpy(mask.astype(np.int64))
