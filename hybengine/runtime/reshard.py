"""Resuming a snapshot on another number of ranks: what is carried and how.

A snapshot written by W ranks is resumed by W' ranks (`hybengine train --resume RUN` under a launcher
that starts W' ranks). Carried:
- the global batch, batch_size * grad_accum * world_size images per optimizer step: the per-rank batch
  is rescaled (batch_size * W / W') and the accumulation kept; where that does not divide, the per-rank
  batch is kept and the accumulation rescaled; where neither divides, the resume is refused in one line;
- the data position: the loader counts micro-batches per rank, each a global micro-batch of
  batch_size * world_size consecutive items of the one global stream (hybengine/data/loader.py); the
  count is converted through the number of items consumed, so the new ranks continue at the very item
  the old ones stopped at: no item is repeated or skipped, and each item keeps its augmentation
  (drawn from seed, epoch and index);
- the fp32 weights and the Adam moments and step count: DeepSpeed's ZeRO files are partitioned by
  rank, so rank 0 converts the snapshot into DeepSpeed's universal checkpoint (one folder per
  parameter: fp32, exp_avg, exp_avg_sq, step; deepspeed.checkpoint.ds_to_universal), which every rank
  loads with its own partitioning (`checkpoint.load_universal`), and which is deleted once loaded.
Not carried: the per-rank random streams of the noise draws (each rank has its own; ranks that did
not exist start from their seed), so a resumed run is not bit for bit the run that was not resized;
its loss curve continues (tests/test_deepspeed_reshard.py).
"""
from __future__ import annotations

import logging
import re
import shutil
from argparse import Namespace
from pathlib import Path

log = logging.getLogger("hybengine.runtime")
_RANK_FILE = re.compile(r"^rank(\d+)_state\.pt$")


def saved_world_size(snap: Path) -> int:
    """How many ranks wrote a snapshot: its rank<r>_state.pt files."""
    return sum(1 for p in Path(snap).iterdir() if _RANK_FILE.match(p.name))


def rescale_batch(batch_size: int, grad_accum: int, old_world: int, new_world: int) -> tuple[int, int]:
    """(per-rank batch, accumulation) on new_world ranks with the same global batch; ValueError if none."""
    total = batch_size * grad_accum * old_world
    if (batch_size * old_world) % new_world == 0:
        return batch_size * old_world // new_world, grad_accum
    if total % (batch_size * new_world) == 0:
        return batch_size, total // (batch_size * new_world)
    raise ValueError(f"the snapshot was written by {old_world} rank(s) with a global batch of {total} images "
                     f"(train.batch_size={batch_size} x train.grad_accum={grad_accum} x {old_world} ranks), "
                     f"which {new_world} ranks cannot share evenly; resume on a number of ranks that divides "
                     f"{batch_size * old_world} or {total}")


def rescale_loader_state(state: dict, old_micro_global: int, new_micro_global: int) -> dict:
    """A loader position counted in global micro-batches of old_micro_global items -> of new_micro_global."""
    items = int(state["batch"]) * old_micro_global
    if items % new_micro_global:
        raise ValueError(f"the snapshot's data position (item {items} of the global stream) is not at a "
                         f"boundary of {new_micro_global} items: resume on the saved number of ranks")
    return {**state, "batch": items // new_micro_global}


def universal_folder(snap: Path) -> Path:
    """Where a snapshot's universal conversion is written: beside it, never inside it."""
    return Path(snap).parent / f"universal_{Path(snap).name}"


def convert_to_universal(snap: Path) -> Path:
    """Rank 0 only: DeepSpeed's ZeRO files of `snap` -> a universal checkpoint folder (written under a
    .tmp name, then renamed), holding `zero/` and the model-states file the engine reads beside it."""
    from deepspeed.checkpoint import ds_to_universal

    snap, out = Path(snap), universal_folder(snap)
    if out.is_dir():
        return out  # an earlier resume converted it and was stopped before deleting it
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    args = Namespace(input_folder=str(snap), output_folder=str(tmp), num_extract_workers=1,
                     num_merge_workers=1, keep_temp_folder=False, strict=True, inject_missing_state=True)
    ds_to_universal.main(args)
    for model_file in snap.glob("*_model_states.pt"):
        shutil.copy2(model_file, tmp / model_file.name)
    tmp.rename(out)
    return out


def fit_world_size(cfg, snap: Path, world_size: int):
    """(cfg with train.batch_size / train.grad_accum rescaled for world_size ranks, a note for the run log or
    None when the snapshot was written by as many ranks)."""
    from dataclasses import replace

    saved = saved_world_size(snap)
    if saved in (0, world_size):
        return cfg, None
    if not any(Path(snap).glob("*_optim_states.pt")):
        raise ValueError(f"{snap} was written by {saved} rank(s) without DeepSpeed's ZeRO files and {world_size} "
                         f"run now; resume it on {saved} rank(s)")
    t = cfg.train
    batch, accum = rescale_batch(t.batch_size, t.grad_accum, saved, world_size)
    note = (f"resuming on {world_size} rank(s) a run saved by {saved}: world size {saved} -> {world_size}, "
            f"per-rank batch {t.batch_size} -> {batch}, accumulation {t.grad_accum} -> {accum}, global batch "
            f"{t.batch_size * t.grad_accum * saved} images kept; weights and Adam state re-partitioned "
            "through a universal checkpoint")
    return replace(cfg, train=replace(t, batch_size=batch, grad_accum=accum)), note


def fit_loader_state(rank_state: dict, saved_batch_size: int, batch_size: int, world_size: int) -> dict:
    """The loader position of a snapshot written by rank_state["saved_world_size"] ranks, for this run."""
    saved_world = rank_state["saved_world_size"]
    state = rank_state["loader"]
    if saved_world == world_size:
        return state
    new = rescale_loader_state(state, saved_batch_size * saved_world, batch_size * world_size)
    log.info("data position carried: item %d of the global stream (micro-batch %d of %d items -> %d of %d)",
             int(state["batch"]) * saved_batch_size * saved_world, int(state["batch"]),
             saved_batch_size * saved_world, new["batch"], batch_size * world_size)
    return new
