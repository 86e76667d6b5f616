"""Snapshots that survive a kill: written into `<tag>.tmp/`, then renamed to `<tag>/` in one step.

checkpoints/
  latest                   name of the newest complete snapshot (replaced atomically)
  step_00000500/
    weights.pt             rank 0: full fp32 model + EMA weights + resolved config (what fine-tunes load)
    rank<r>_state.pt       each rank: step, RNG states, data position
    plain_state.pt | DeepSpeed files   model + optimizer state
A `.tmp` folder left by a kill is never read and is removed by the next snapshot.
"""
from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import torch

from . import faults
from .atomic import atomic_rename_dir, atomic_torch_save, atomic_write_text
from .distributed import DistInfo, barrier

log = logging.getLogger("hybengine.runtime")
_TAG = re.compile(r"^step_(\d{8})$")


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def complete_snapshots(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("step_*") if p.is_dir() and _TAG.match(p.name))


def find_snapshot(path: str | Path) -> Path:
    """A run folder, its checkpoints/ folder, or one snapshot folder -> the snapshot folder."""
    path = Path(path)
    if (path / "weights.pt").is_file():
        return path
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    latest = root / "latest"
    if latest.is_file():
        snap = root / latest.read_text().strip()
        if (snap / "weights.pt").is_file():
            return snap
        log.warning("%s names %s, which is incomplete; using the newest complete snapshot", latest, snap)
    snaps = [s for s in complete_snapshots(root) if (s / "weights.pt").is_file()]
    if not snaps:
        raise FileNotFoundError(f"no complete checkpoint under '{path}' (looked for checkpoints/latest "
                                "and step_* folders holding weights.pt)")
    return snaps[-1]


def load_weights(path: str | Path) -> dict:
    """{'model', 'ema', 'config', 'step'} of a snapshot (CPU tensors); used by fine-tune and predict."""
    snap = find_snapshot(path)
    return torch.load(snap / "weights.pt", map_location="cpu", weights_only=True)


class CheckpointManager:
    def __init__(self, root: Path, dist: DistInfo, keep_last: int):
        self.root, self.dist, self.keep_last = Path(root), dist, keep_last
        if dist.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
        barrier(dist)

    def save(self, step: int, backend, rank_state: dict, weights: dict) -> Path:
        """Collective: every rank calls it. rank_state is this rank's; weights come from rank 0."""
        tag = tag_for(step)
        final, tmp = self.root / tag, self.root / f"{tag}.tmp"
        if self.dist.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        barrier(self.dist)
        backend.save(tmp)
        atomic_torch_save(rank_state, tmp / f"rank{self.dist.rank}_state.pt")
        if self.dist.is_main:
            faults.maybe_kill(faults.KILL_DURING_SAVE, step)
            atomic_torch_save(weights, tmp / "weights.pt")
        barrier(self.dist)
        if self.dist.is_main:
            if final.exists():  # a re-run of the same step replaces the old snapshot
                shutil.rmtree(final)
            atomic_rename_dir(tmp, final)
            atomic_write_text(self.root / "latest", tag + "\n")
            for old in complete_snapshots(self.root)[: -self.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
            for stale in self.root.glob("step_*.tmp"):
                shutil.rmtree(stale, ignore_errors=True)
        barrier(self.dist)
        return final

    def load(self, path: str | Path, backend) -> tuple[dict, dict]:
        """Restores the backend; returns (this rank's state, weights dict)."""
        snap = find_snapshot(path)
        rank_file = snap / f"rank{self.dist.rank}_state.pt"
        if not rank_file.is_file():
            raise FileNotFoundError(f"{rank_file} is missing: was the run saved with a different number "
                                    f"of ranks than the {self.dist.world_size} running now?")
        backend.load(snap)
        rank_state = torch.load(rank_file, map_location="cpu", weights_only=False)
        weights = torch.load(snap / "weights.pt", map_location="cpu", weights_only=True)
        log.info("resumed from %s (step %d)", snap, rank_state["step"])
        return rank_state, weights


def save_final_weights(root: Path, cfg, net, step: int) -> Path:
    """Final weights alone (no optimizer or RNG state), in the snapshot layout `load_weights` reads:
    `root/step_N/weights.pt` and `root/latest`. For runs trained outside CheckpointManager (batched
    fine-tunes) whose weights are kept for `predict`."""
    from dataclasses import asdict

    snap = root / tag_for(step)
    snap.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().cpu() for k, v in net.state_dict().items()}
    atomic_torch_save({"model": state, "ema": None, "config": asdict(cfg), "step": step}, snap / "weights.pt")
    atomic_write_text(root / "latest", snap.name + "\n")
    return snap
