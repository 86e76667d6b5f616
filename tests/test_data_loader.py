"""The training stream: seeded epochs, disjoint covering rank shards, exact resume."""
from __future__ import annotations

import itertools

import pytest
import torch
from test_data_helpers import threshold_folder

from hybengine.config import DataConfig
from hybengine.data import TrainLoader, build_train_loader
from hybengine.data.epoch_stream import ShardedEpochStream, epoch_permutation


class IdentityDataset(torch.utils.data.Dataset):
    """Returns its key (epoch, index) and counts the items it was asked for."""

    def __init__(self, n: int):
        self.n, self.calls = n, 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key):
        self.calls += 1
        return torch.tensor(key)


def rank_items(n, batch, world, epochs, seed=0):
    """{rank: [(epoch, index), ...]} for the first `epochs` epochs, read through TrainLoader."""
    total = epochs * n // (batch * world)  # whole global batches inside those epochs
    out = {}
    for rank in range(world):
        loader = TrainLoader(IdentityDataset(n), batch, seed, rank, world)
        out[rank] = [tuple(r) for b in itertools.islice(loader, total) for r in b.tolist()]
    return out


@pytest.mark.parametrize("n,batch,world", [(12, 3, 2), (10, 2, 2), (7, 2, 3), (3, 4, 2)])
def test_rank_shards_disjoint_and_covering_each_epoch(n, batch, world):
    epochs = batch * world  # a whole number of global batches
    items = rank_items(n, batch, world, epochs)
    for e in range(epochs):
        shards = [{i for (ep, i) in items[r] if ep == e} for r in range(world)]
        for a, b in itertools.combinations(shards, 2):
            assert not a & b, f"epoch {e}: ranks share {a & b}"
        assert sum(len(s) for s in shards) == n and set().union(*shards) == set(range(n))


def test_epochs_are_seeded_permutations():
    assert list(epoch_permutation(10, 0, 0)) == list(epoch_permutation(10, 0, 0))
    assert list(epoch_permutation(10, 0, 0)) != list(epoch_permutation(10, 0, 1))
    assert list(epoch_permutation(10, 0, 0)) != list(epoch_permutation(10, 1, 0))
    stream = ShardedEpochStream(10, 5, seed=0)
    first = [i for _, i in itertools.islice(iter(stream), 10)]
    assert first == list(epoch_permutation(10, 0, 0))


def test_state_dict_resume_exact_and_decodes_nothing_skipped():
    ds = IdentityDataset(11)
    straight = TrainLoader(ds, 4, seed=9)
    want = [next(straight) for _ in range(9)]
    part = TrainLoader(IdentityDataset(11), 4, seed=9)
    for _ in range(5):
        next(part)
    state = part.state_dict()
    assert state == {"epoch": 5 * 4 // 11, "batch": 5}
    fresh_ds = IdentityDataset(11)
    resumed = TrainLoader(fresh_ds, 4, seed=9)
    resumed.load_state_dict(state)
    got = [next(resumed) for _ in range(4)]
    assert all(torch.equal(a, b) for a, b in zip(want[5:], got, strict=True))
    assert fresh_ds.calls == 4 * 4  # only the items of the batches it returned


def test_resume_with_real_files_and_workers(tmp_path):
    cfg = threshold_folder(tmp_path, 9, 20, 20)
    cfg.crop, cfg.num_workers = 12, 2
    straight = build_train_loader(cfg, 4, seed=2)
    want = [next(straight) for _ in range(6)]
    straight.close()
    part = build_train_loader(cfg, 4, seed=2)
    _ = [next(part) for _ in range(2)]
    state = part.state_dict()
    part.close()
    resumed = build_train_loader(cfg, 4, seed=2)
    resumed.load_state_dict(state)
    for x, y in want[2:]:
        rx, ry = next(resumed)
        assert torch.equal(x, rx) and torch.equal(y, ry)
    resumed.close()


def test_state_from_another_setting_is_refused():
    loader = TrainLoader(IdentityDataset(10), 4, seed=0)
    with pytest.raises(ValueError, match="batch_size=4"):
        loader.load_state_dict({"epoch": 0, "batch": 30})


def test_budget_smaller_than_batch_still_gives_full_batches(tmp_path):
    cfg = threshold_folder(tmp_path, 3, 16, 16)
    cfg.crop, cfg.labeled_subset = 8, ["img001"]
    loader = build_train_loader(cfg, batch_size=4, seed=0)
    x, y = next(loader)
    assert x.shape == (4, 1, 8, 8) and y.shape == (4, 8, 8)
    assert loader.state_dict() == {"epoch": 4, "batch": 1}


def test_bad_rank_and_loader_choice(tmp_path):
    cfg = threshold_folder(tmp_path, 2, 16, 16)
    with pytest.raises(ValueError, match="rank=2"):
        build_train_loader(cfg, 2, 0, rank=2, world_size=2)
    assert isinstance(build_train_loader(DataConfig(**{**cfg.__dict__, "loader": "torch"}), 2, 0), TrainLoader)
