"""Unlabeled images: images without masks, mixed into training batches at a set share.

Where they come from (`unlabeled_folders`): `<data.root>/unlabeled/images/` when that folder exists,
and every folder of `data.unlabeled` (its `images/` sub-folder, e.g. the target's train split; a
`masks/` folder beside it is never read). They are used when `data.unlabeled_share > 0`: the last
`round(unlabeled_share * batch_size)` samples of every training batch are unlabeled, the first ones are
the labeled split's, so the objective's `clean_share` head of the batch stays labeled.

The per-sample "has mask" flag travels in the mask itself: an unlabeled sample's mask is ignore_index
throughout (`objective.has_mask`), so it has no mask term and both loaders keep yielding (image, mask)
batches. Crops, flips, quarter turns and intensity jitter are the labeled path's (`augment_pair`), drawn
from their own stream (`sample_rng(seed + SEED_OFFSET, epoch, i)`); the few-label augmentations
(data.aug_*) are for labeled samples only.

Both loaders carry them: the torch DataLoader through `MixedDataset` + `MixedStream`, the DALI pipeline
(hybengine/data/dali_pipeline.py) from the same `MixedStream` and `UnlabeledScan.info`, with an explicit
per-sample has-mask column; for the same files and seed they give the same batches.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hybengine.config import DataConfig
from hybengine.data.augment import augment_pair, sample_rng
from hybengine.data.epoch_stream import ShardedEpochStream
from hybengine.data.errors import DatasetError
from hybengine.data.folder_dataset import FileInfo
from hybengine.data.image_io import IMAGE_EXTENSIONS, FileProblem, apply_norm, as_channels, norm_params, read_raw

UNLABELED_SPLIT = "unlabeled"  # <root>/unlabeled/images: images only
SEED_OFFSET = 7_919  # the unlabeled stream's seed is train.seed + this: apart from the labeled stream's


def unlabeled_folders(cfg: DataConfig) -> list[Path]:
    """The image folders unlabeled samples are drawn from (module docstring), in a fixed order."""
    own = Path(cfg.root) / UNLABELED_SPLIT / "images"
    return [*([own] if own.is_dir() else []), *(Path(f) / "images" for f in cfg.unlabeled)]


def unlabeled_per_batch(cfg: DataConfig, batch_size: int) -> int:
    """How many samples of a batch of `batch_size` are unlabeled (0 when the share is 0)."""
    k = round(cfg.unlabeled_share * batch_size)
    if cfg.unlabeled_share > 0 and not 1 <= k < batch_size:
        raise DatasetError(f"data.unlabeled_share={cfg.unlabeled_share} with a batch of {batch_size} gives {k} "
                           "unlabeled samples; it must leave at least one of each kind")
    return k


@dataclass
class UnlabeledScan:
    files: list[Path]
    images: list[np.ndarray]  # normalised (I, H, W) float32, like the labeled path's
    info: list[FileInfo]  # per file, for the DALI pipeline's plan (no mask: mask_gray8_png is True)


def scan_unlabeled(cfg: DataConfig) -> UnlabeledScan:
    """Reads every unlabeled image once (no mask is opened); raises one DatasetError listing every problem."""
    problems: list[str] = []
    files: list[Path] = []
    for folder in unlabeled_folders(cfg):
        if not folder.is_dir():
            problems.append(f"{folder}: unlabeled image folder does not exist (data.unlabeled names "
                            f"{folder.parent}, which must hold images/)")
            continue
        found = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        bad = [p for p in found if p.suffix.lower() not in IMAGE_EXTENSIONS]
        problems += [f"{p}: unsupported image extension '{p.suffix}' (allowed: {' '.join(IMAGE_EXTENSIONS)})"
                     for p in bad]
        good = [p for p in found if p not in bad]
        if not good:
            problems.append(f"{folder}: no unlabeled images ({' '.join(IMAGE_EXTENSIONS)} files)")
        files += good
    images, info = [], []
    for path in files:
        try:
            arr = read_raw(path)
            raw, dtype_max = as_channels(arr, cfg.image_channels)
            norm = norm_params(raw, cfg.normalize, dtype_max)
            images.append(apply_norm(raw, norm))
            info.append(FileInfo.of_image(arr, norm, mask_gray8_png=True))  # no mask to judge
        except FileProblem as e:
            problems.append(f"{path}: {e}")
    if problems:
        raise DatasetError.listing("unlabeled images", problems, "Fix or remove the files listed, or correct "
                                   "data.unlabeled / <root>/unlabeled/images.")
    return UnlabeledScan(files, images, info)


class UnlabeledImages(torch.utils.data.Dataset):
    """Training crops of the unlabeled images: (epoch, i) -> (image (I, crop, crop), all-ignore mask)."""

    def __init__(self, cfg: DataConfig, seed: int):
        self.cfg, self.seed = cfg, seed + SEED_OFFSET
        self.scan = scan_unlabeled(cfg)

    def __len__(self) -> int:
        return len(self.scan.images)

    def __getitem__(self, key: tuple[int, int]):
        epoch, i = key
        c = self.cfg
        image = self.scan.images[i]
        empty = np.full(image.shape[1:], c.ignore_index, np.int32)
        image, mask = augment_pair(image, empty, sample_rng(self.seed, epoch, i), c.crop, c.augment,
                                   c.intensity_jitter, c.ignore_index)
        return torch.from_numpy(image), torch.from_numpy(mask.astype(np.int64))


class MixedDataset(torch.utils.data.Dataset):
    """Labeled items 0..n_labeled-1, then the unlabeled ones (keys from `MixedStream`)."""

    def __init__(self, labeled: torch.utils.data.Dataset, unlabeled: UnlabeledImages):
        self.labeled, self.unlabeled, self.n_labeled = labeled, unlabeled, len(labeled)

    def __len__(self) -> int:
        return self.n_labeled + len(self.unlabeled)

    def __getitem__(self, key: tuple[int, int]):
        epoch, i = key
        if i < self.n_labeled:
            return self.labeled[(epoch, i)]
        return self.unlabeled[(epoch, i - self.n_labeled)]


class MixedStream(torch.utils.data.Sampler):
    """Batches of `batch_size - k` labeled items (their own sharded epoch stream) then `k` unlabeled ones
    (another, seeded apart), from global batch `start_batch` on, forever; keys index a MixedDataset."""

    def __init__(self, n_labeled: int, n_unlabeled: int, batch_size: int, k: int, seed: int, rank: int = 0,
                 world_size: int = 1, start_batch: int = 0):
        self.labeled = ShardedEpochStream(n_labeled, batch_size - k, seed, rank, world_size, start_batch)
        self.unlabeled = ShardedEpochStream(n_unlabeled, k, seed + SEED_OFFSET, rank, world_size, start_batch)
        self.n_labeled, self.b, self.k = n_labeled, batch_size - k, k

    def __iter__(self):
        lab, unl = iter(self.labeled), iter(self.unlabeled)
        while True:
            for _ in range(self.b):
                yield next(lab)
            for _ in range(self.k):
                epoch, i = next(unl)
                yield epoch, self.n_labeled + i

    def __len__(self) -> int:
        raise TypeError("MixedStream is infinite")
