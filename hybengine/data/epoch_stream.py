"""The order of training items: seeded epochs laid end to end, cut into per-rank batches.

Shared by the torch DataLoader and the DALI pipeline, so both see the same items in the same order
(see hybengine/data/loader.py for the policy: no partial batch, nothing dropped, per-epoch shards
disjoint and covering, resume by arithmetic).
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

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


class BatchCounter:
    """Position of a loader in its stream, as batches handed out; state_dict / load_state_dict.
    Needs `batch_size`, `world_size`, `num_items` and a `close()` that drops the running iterator."""

    batch_size: int
    world_size: int
    num_items: int
    _batch: int = 0
    labeled_per_batch: int = 0  # with unlabeled samples mixed in: the labeled items of a batch (0: all)

    @property
    def epoch(self) -> int:
        """Epoch (of the labeled items) of the first item of the next global batch."""
        return self._batch * (self.labeled_per_batch or self.batch_size) * self.world_size // self.num_items

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self._batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continues at batch state["batch"]; nothing before it is decoded."""
        batch = int(state["batch"])
        expected = batch * (self.labeled_per_batch or self.batch_size) * self.world_size // self.num_items
        if "epoch" in state and int(state["epoch"]) != expected:
            raise ValueError(
                f"loader state {state} does not fit this loader: batch {batch} is in epoch {expected} with "
                f"batch_size={self.batch_size}, world_size={self.world_size}, {self.num_items} items; "
                "resume with the batch size, number of ranks and data of the saved run")
        self.close()
        self._batch = batch

    def close(self) -> None:
        raise NotImplementedError
