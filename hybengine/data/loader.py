"""Training batches: an infinite, seeded, rank-sharded, resumable stream.

The stream. Epoch e visits the dataset in the permutation `epoch_permutation(n, seed, e)`. The
epochs are laid end to end into one infinite sequence of (epoch, index) items, and that sequence
is cut into global batches of batch_size * world_size consecutive items; rank r takes the r-th
slice of batch_size from every global batch.

Last partial batch policy: there is none. The end of one epoch's permutation is followed by the
start of the next ("wrap"), so every batch holds exactly
batch_size items, no item is ever dropped, and within each epoch the ranks see disjoint shards
that together cover the dataset once. A batch that straddles an epoch boundary may hold the same
image twice, each with its own epoch's augmentation. This also serves label budgets smaller than
the batch (1 labeled image, batch 8: eight augmentations from eight epochs).

Resuming. `state_dict()` = {"epoch": epoch of the next global batch's first item, "batch": batches
consumed so far, counted per rank and equal on all ranks}. `load_state_dict` restarts the stream
at that batch by arithmetic alone: nothing skipped is decoded.

The wire to a CUDA device. Batches are collated into pinned (page-locked) host memory, so that the
loop's `non_blocking=True` copies are real asynchronous DMA instead of a staged, synchronous copy
from pageable memory; masks travel as uint8 (8x fewer bytes than int64) when every label and the
ignore index fit, and the loop widens them on the device. On the CPU neither applies.
"""
from __future__ import annotations

import functools
import logging
import random
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch

from hybengine.config import DataConfig
from hybengine.data.epoch_stream import BatchCounter, ShardedEpochStream
from hybengine.data.errors import DatasetError
from hybengine.data.folder_dataset import FolderDataset
from hybengine.data.unlabeled import MixedDataset, MixedStream, UnlabeledImages, unlabeled_per_batch

if TYPE_CHECKING:
    from hybengine.data.dali_pipeline import DaliTrainLoader

log = logging.getLogger("hybengine.data")


def _seed_worker(worker_id: int) -> None:
    """Seeds numpy and random in a worker from torch's per-worker seed (itself seeded by the
    loader's generator). Augmentation does not use these: it draws from (seed, epoch, index)."""
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def _collate(batch: list, mask_dtype: torch.dtype):
    x, y = torch.utils.data.default_collate(batch)
    return x, y.to(mask_dtype)


class TrainLoader(BatchCounter):
    """Infinite iterator of (image (B, I, crop, crop) float32, mask (B, crop, crop) `mask_dtype`)
    batches, a torch DataLoader underneath, in pinned memory with `pin_memory`. See the module
    docstring for sharding, resuming and the wire to a GPU."""

    def __init__(self, dataset: FolderDataset, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, num_workers: int = 0, pin_memory: bool = False,
                 mask_dtype: torch.dtype = torch.int64, unlabeled: UnlabeledImages | None = None,
                 unlabeled_k: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} is outside 0..world_size-1 (world_size={world_size})")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        self.pin_memory, self.mask_dtype = pin_memory, mask_dtype
        self.num_items = len(dataset)
        self.unlabeled_k = unlabeled_k if unlabeled is not None else 0
        if self.unlabeled_k:  # the last unlabeled_k samples of each batch (hybengine/data/unlabeled.py)
            self.dataset = MixedDataset(dataset, unlabeled)
            self.labeled_per_batch = batch_size - self.unlabeled_k
        self._batch = 0  # batches handed to the caller
        self._it: Iterator | None = None

    def _iterator(self) -> Iterator:
        if self.unlabeled_k:
            stream = MixedStream(self.num_items, len(self.dataset.unlabeled), self.batch_size, self.unlabeled_k,
                                 self.seed, self.rank, self.world_size, start_batch=self._batch)
        else:
            stream = ShardedEpochStream(len(self.dataset), self.batch_size, self.seed, self.rank,
                                        self.world_size, start_batch=self._batch)
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + self.rank) % 2**63)
        narrow = self.mask_dtype != torch.int64  # collate, then cast the masks (uint8 on the wire)
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=self.batch_size, sampler=stream, num_workers=self.num_workers,
            worker_init_fn=_seed_worker, generator=gen, drop_last=False, pin_memory=self.pin_memory,
            collate_fn=functools.partial(_collate, mask_dtype=self.mask_dtype) if narrow else None)
        return iter(loader)

    def __iter__(self) -> TrainLoader:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._it is None:
            self._it = self._iterator()
        batch = next(self._it)
        self._batch += 1
        return batch

    def close(self) -> None:
        """Stops the worker processes (a new iterator starts on the next batch)."""
        it, self._it = self._it, None
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the workers die with the process anyway
            pass


def wire_format(cfg: DataConfig, device: torch.device | None) -> dict:
    """TrainLoader's pin_memory and mask_dtype for batches bound to `device` (module docstring)."""
    if device is None or device.type != "cuda":
        return {}
    fits = 0 <= cfg.ignore_index <= 255 and cfg.num_classes <= 256
    return {"pin_memory": True, "mask_dtype": torch.uint8 if fits else torch.int64}


def build_train_loader(cfg: DataConfig, batch_size: int, seed: int, rank: int = 0,
                       world_size: int = 1, device: torch.device | None = None) -> TrainLoader | DaliTrainLoader:
    """The training batch source named by `cfg.loader`, with the choice and its reason logged;
    `device`: where the batches go (pinned memory and uint8 masks for CUDA, `wire_format`).
    torch: the DataLoader path. dali: the DALI pipeline, `mixed` (GPU) decode when CUDA is
    available, else `cpu` (slow; for tests). auto: DALI on a GPU when it is installed and can
    reproduce the torch path on these files (the unlabeled images included), else torch. With
    data.unlabeled_share > 0 both loaders mix in the unlabeled images (hybengine/data/unlabeled.py)."""
    dataset = FolderDataset(cfg, cfg.train_split, train=True, seed=seed)  # validates the folder
    k = unlabeled_per_batch(cfg, batch_size)
    unlabeled = UnlabeledImages(cfg, seed) if k else None  # validates the unlabeled folders
    mixed = f", {k} of {batch_size} samples per batch unlabeled ({len(unlabeled)} images)" if k else ""

    def torch_loader(why: str) -> TrainLoader:
        log.info("data loader: torch DataLoader, %d worker(s)%s (%s)", cfg.num_workers, mixed, why)
        return TrainLoader(dataset, batch_size, seed, rank, world_size, cfg.num_workers, **wire_format(cfg, device),
                           unlabeled=unlabeled, unlabeled_k=k)

    if cfg.loader == "torch":
        return torch_loader("data.loader=torch")
    from hybengine.data import dali_pipeline as dp

    gpu = torch.cuda.is_available()
    unlabeled_scan = unlabeled.scan if unlabeled is not None else None
    if cfg.loader == "auto":
        why_not = ("nvidia.dali is not installed" if not dp.dali_installed() else
                   "no CUDA device (DALI's CPU mode is slower than the DataLoader)" if not gpu else
                   "; ".join(dp.plan_problems(dataset.scan, cfg, unlabeled_scan)))
        if why_not:
            return torch_loader(f"data.loader=auto: {why_not}")
    elif not dp.dali_installed():
        raise DatasetError("data.loader=dali but nvidia.dali is not installed: pip install -e '.[dali]' "
                           "(the nvidia-dali-cuda130 wheel), or use data.loader=torch")
    device = "mixed" if gpu else "cpu"
    threads = max(1, cfg.num_workers)
    log.info("data loader: DALI, %s decode, %d thread(s)%s (data.loader=%s)", device, threads, mixed, cfg.loader)
    return dp.DaliTrainLoader(dataset.scan, cfg, batch_size, seed, rank, world_size, device, threads,
                              unlabeled=unlabeled_scan, unlabeled_k=k)
