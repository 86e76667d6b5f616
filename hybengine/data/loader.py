"""Training batches: an infinite, seeded, rank-sharded, resumable stream.

The stream. Epoch e visits the dataset in the permutation `epoch_permutation(n, seed, e)`. The
epochs are laid end to end into one infinite sequence of (epoch, index) items, and that sequence
is cut into global batches of batch_size * world_size consecutive items; rank r takes the r-th
slice of batch_size from every global batch.

Last partial batch policy: there is none. Batches never straddle a hole: the end of one epoch's
permutation is followed by the start of the next ("wrap"), so every batch holds exactly
batch_size items, no item is ever dropped, and within each epoch the ranks see disjoint shards
that together cover the dataset once. A batch that straddles an epoch boundary may hold the same
image twice, each with its own epoch's augmentation. This also serves label budgets smaller than
the batch (1 labeled image, batch 8: eight augmentations from eight epochs).

Resuming. `state_dict()` = {"epoch": epoch of the next global batch's first item, "batch": batches
consumed so far, counted per rank and equal on all ranks}. `load_state_dict` restarts the stream
at that batch by arithmetic alone: nothing skipped is decoded.
"""
from __future__ import annotations

import logging
import random
from collections.abc import Iterator

import numpy as np
import torch

from hybengine.config import DataConfig
from hybengine.data.folder_dataset import FolderDataset

log = logging.getLogger("hybengine.data")
_PERM_TAG = 1  # first SeedSequence word: apart from the per-sample augmentation streams


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order in which epoch `epoch` visits the n items; a function of (seed, epoch) only."""
    return np.random.default_rng([_PERM_TAG, seed % 2**63, epoch]).permutation(n)


class ShardedEpochStream(torch.utils.data.Sampler):
    """The (epoch, index) items of one rank, from global batch `start_batch` on, forever."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 start_batch: int = 0):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size, self.start_batch = rank, world_size, start_batch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        b, w = self.batch_size, self.world_size
        perm_epoch, perm = -1, None
        g = self.start_batch
        while True:
            first = (g * w + self.rank) * b  # position of this rank's first item in the global stream
            for k in range(first, first + b):
                epoch, pos = divmod(k, self.n)
                if epoch != perm_epoch:
                    perm_epoch, perm = epoch, epoch_permutation(self.n, self.seed, epoch)
                yield epoch, int(perm[pos])
            g += 1

    def __len__(self) -> int:  # infinite; DataLoader only needs this for len(loader), never called here
        raise TypeError("ShardedEpochStream is infinite")


def _seed_worker(worker_id: int) -> None:
    """Seeds numpy and random in a worker from torch's per-worker seed (itself seeded by the
    loader's generator). Augmentation does not use these: it draws from (seed, epoch, index)."""
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


class TrainLoader:
    """Infinite iterator of (image (B, I, crop, crop) float32, mask (B, crop, crop) int64) batches,
    a torch DataLoader underneath. See the module docstring for sharding and resuming."""

    def __init__(self, dataset: FolderDataset, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, num_workers: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} is outside 0..world_size-1 (world_size={world_size})")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        self._batch = 0  # batches handed to the caller
        self._it: Iterator | None = None

    @property
    def epoch(self) -> int:
        """Epoch of the first item of the next global batch."""
        return self._batch * self.batch_size * self.world_size // len(self.dataset)

    def _iterator(self) -> Iterator:
        stream = ShardedEpochStream(len(self.dataset), self.batch_size, self.seed, self.rank,
                                    self.world_size, start_batch=self._batch)
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + self.rank) % 2**63)
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=self.batch_size, sampler=stream, num_workers=self.num_workers,
            worker_init_fn=_seed_worker, generator=gen, drop_last=False)
        return iter(loader)

    def __iter__(self) -> TrainLoader:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._it is None:
            self._it = self._iterator()
        batch = next(self._it)
        self._batch += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self._batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        batch = int(state["batch"])
        expected = batch * self.batch_size * self.world_size // len(self.dataset)
        if "epoch" in state and int(state["epoch"]) != expected:
            raise ValueError(
                f"loader state {state} does not fit this loader: batch {batch} is in epoch {expected} with "
                f"batch_size={self.batch_size}, world_size={self.world_size}, {len(self.dataset)} items; "
                "resume with the batch size, number of ranks and data of the saved run")
        self.close()
        self._batch = batch

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


def build_train_loader(cfg: DataConfig, batch_size: int, seed: int, rank: int = 0,
                       world_size: int = 1) -> TrainLoader:
    """The training batch source named by `cfg.loader`; the choice is logged."""
    if cfg.loader in ("dali", "auto"):
        # Phase-2 seam: hybengine/data/dali_pipeline.py plugs in here.
        if cfg.loader == "dali":
            raise NotImplementedError("data.loader=dali: the DALI pipeline is not built yet; "
                                      "use data.loader=torch")
        log.info("data loader: torch DataLoader (data.loader=auto; the DALI pipeline is not built yet)")
    else:
        log.info("data loader: torch DataLoader (data.loader=torch)")
    dataset = FolderDataset(cfg, cfg.train_split, train=True, seed=seed)
    return TrainLoader(dataset, batch_size, seed, rank, world_size, cfg.num_workers)
