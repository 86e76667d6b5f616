"""Snapshots that survive a kill: written into `<tag>.tmp/`, then renamed to `<tag>/` in one step.

checkpoints/
  latest                   name of the newest complete snapshot (replaced atomically)
  step_00000500/
    weights.pt             rank 0: full fp32 model + EMA weights + resolved config (what fine-tunes load)
    rank<r>_state.pt       each rank: step, RNG states, data position
    plain_state.pt | DeepSpeed files   model + optimizer state
A `.tmp` folder left by a kill is never read and is removed by the next snapshot.
A snapshot resumed on another number of ranks (DeepSpeed) is converted into `universal_<tag>/` beside
it, loaded, and that folder deleted (hybengine/runtime/reshard.py).

Every file is read with `torch.load(weights_only=True)`: tensors and plain types only, so a crafted
file in a run folder cannot run code. Ranks' RNG and loader states are stored as such (numpy arrays as
tensors). DeepSpeed's loader unpickles its own files in full, so before it runs each `.pt` file of the
snapshot is read the same safe way, with only the three plain classes DeepSpeed's files hold allowed.
"""
from __future__ import annotations

import errno
import logging
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import faults, reshard
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


class UnsafeCheckpointError(ValueError):
    """A checkpoint file holds objects other than tensors and plain types; it is not loaded."""


class SnapshotWriteError(OSError):
    """A snapshot could not be written (disk full, ...); the previous snapshot is intact."""


def safe_load(path: Path, allow: list | tuple = (), mmap: bool = False) -> Any:
    """torch.load with weights_only=True (plus the classes in `allow`); a file that needs more is refused
    with a message naming it, never unpickled."""
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        lines = [line.strip() for line in str(e).splitlines() if "Unsupported" in line or "error:" in line]
        first = lines[0].split(" was not")[0] if lines else type(e).__name__
        raise UnsafeCheckpointError(
            f"{path}: refused to load: it holds objects other than tensors and plain types ({first[:200]}); "
            "loading it could run code. Use a snapshot written by this version of hybengine") from None
    except OSError:
        raise  # unreadable for the operating system (missing, permissions): that error names the file
    except Exception as e:  # noqa: BLE001 - not a torch file at all: text, zero bytes, truncated, another
        # format; torch's legacy reader fails on these with KeyError, EOFError, RuntimeError, ...
        reason = (str(e).splitlines() or [""])[0][:200]
        raise UnsafeCheckpointError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {reason}); "
                                    "point at a run or snapshot folder written by hybengine") from None


_WEIGHTS_KEYS = ("model", "ema", "config", "step")


def _check_weights(path: Path, w: Any) -> dict:
    missing = [k for k in _WEIGHTS_KEYS if not isinstance(w, dict) or k not in w]
    if missing:
        raise ValueError(f"{path} is not a hybengine snapshot: it lacks {', '.join(repr(k) for k in missing)} "
                         "(hybengine writes model, ema, config and step); point at a run folder or snapshot "
                         "folder written by hybengine")
    if not isinstance(w["config"], dict):
        raise ValueError(f"{path}: its 'config' is not a mapping of sections; not a hybengine snapshot")
    return w


def load_weights(path: str | Path) -> dict:
    """{'model', 'ema', 'config', 'step'} of a snapshot (CPU tensors); used by fine-tune and predict."""
    file = find_snapshot(path) / "weights.pt"
    return _check_weights(file, safe_load(file))


def read_snapshot_config(snap: Path) -> dict:
    """The resolved config saved in a snapshot (its tensors memory-mapped, not read)."""
    file = Path(snap) / "weights.pt"
    return _check_weights(file, safe_load(file, mmap=True))["config"]


def _deepspeed_globals() -> list:
    """The plain classes DeepSpeed's ZeRO files hold beside tensors (loss scaler, stage, fragment map)."""
    try:
        from deepspeed.runtime.fp16.loss_scaler import LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address
    except ImportError:
        return []
    return [LossScaler, ZeroStageEnum, fragment_address]


def check_snapshot_files(snap: Path) -> None:
    """Reads every .pt file of a snapshot the safe way; raises UnsafeCheckpointError on the first that
    needs more. Run before a loader (DeepSpeed's) that unpickles in full."""
    allow = _deepspeed_globals()
    for file in sorted(Path(snap).rglob("*.pt")):
        safe_load(file, allow, mmap=True)


def _to_plain(obj: Any) -> Any:
    """numpy arrays and scalars -> tensors and Python numbers (what weights_only=True reads)."""
    if isinstance(obj, np.ndarray):
        kind = obj.dtype.str  # e.g. "<u4": stored bit for bit as a signed integer tensor of that size
        signed = obj.view(f"i{obj.dtype.itemsize}") if obj.dtype.kind == "u" else obj
        return {"ndarray": torch.from_numpy(np.ascontiguousarray(signed).copy()), "dtype": kind}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_plain(v) for v in obj)
    return obj


def _from_plain(obj: Any) -> Any:
    if isinstance(obj, dict) and obj.keys() == {"ndarray", "dtype"}:
        return obj["ndarray"].numpy().view(np.dtype(obj["dtype"]))
    if isinstance(obj, dict):
        return {k: _from_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_from_plain(v) for v in obj)
    return obj


def _write_failed(what: Path, root: Path, e: BaseException) -> SnapshotWriteError:
    free = shutil.disk_usage(root).free
    full = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)
    reason = "no space left on device" if full else f"writing failed ({str(e).splitlines()[0][:160]})"
    latest = root / "latest"
    run = root.parent
    if latest.is_file():
        todo = (f"the previous snapshot {latest.read_text().strip()} is intact; free space, then continue with "
                f"--resume {run}")
    else:
        todo = (f"no earlier snapshot exists; free space, then run the same command again (or --resume {run}): "
                "either starts the run over from step 0")
    return SnapshotWriteError(e.errno if isinstance(e, OSError) and e.errno else errno.EIO,
                              f"{reason} while writing the snapshot {what} ({free / 2**20:.1f} MiB free on "
                              f"that disk); {todo}")


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
        try:
            backend.save(tmp)
            atomic_torch_save(_to_plain(rank_state), tmp / f"rank{self.dist.rank}_state.pt")
            if self.dist.is_main:
                faults.maybe_kill(faults.KILL_DURING_SAVE, step)
                atomic_torch_save(weights, tmp / "weights.pt")
        except (OSError, RuntimeError) as e:
            error = _write_failed(tmp, self.root, e)
            shutil.rmtree(tmp, ignore_errors=True)  # give the space back; `latest` still names the old one
            raise error from e
        barrier(self.dist)
        if self.dist.is_main:
            if final.exists():  # a re-run of the same step replaces the old snapshot
                shutil.rmtree(final)
            atomic_rename_dir(tmp, final)
            atomic_write_text(self.root / "latest", tag + "\n")
            for old in complete_snapshots(self.root)[: -self.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
            for stale in [*self.root.glob("step_*.tmp"), *self.root.glob("universal_step_*")]:
                shutil.rmtree(stale, ignore_errors=True)
        barrier(self.dist)
        return final

    def load(self, path: str | Path, backend) -> tuple[dict, dict]:
        """Restores the backend; returns (this rank's state, weights dict). A snapshot of another number
        of ranks (DeepSpeed only) is converted and partitioned anew (reshard.py); then the state is that
        of the same rank where it existed, else rank 0's with "rng": None (new ranks keep their seeds),
        and "saved_world_size" says how many ranks wrote it."""
        snap = find_snapshot(path)
        saved_world = reshard.saved_world_size(snap)
        rank_file = snap / f"rank{self.dist.rank}_state.pt"
        check_snapshot_files(snap)  # before any loader runs, DeepSpeed's included
        if saved_world == self.dist.world_size:
            if not rank_file.is_file():
                raise FileNotFoundError(f"{rank_file} is missing: the snapshot is incomplete; resume from an "
                                        "earlier one (name its step_* folder)")
            rank_state = _from_plain(safe_load(rank_file))
            backend.load(snap)
        else:
            if backend.name != "deepspeed" or saved_world == 0:
                raise FileNotFoundError(f"{snap} was written by {saved_world} rank(s) and {self.dist.world_size} "
                                        "run now; only train.engine=deepspeed resumes on another number of ranks")
            own = rank_file.is_file()
            rank_state = _from_plain(safe_load(rank_file if own else snap / "rank0_state.pt"))
            if not own:
                rank_state["rng"] = None
            self._load_resharded(snap, backend)
        rank_state["saved_world_size"] = saved_world
        weights = _check_weights(snap / "weights.pt", safe_load(snap / "weights.pt"))
        log.info("resumed from %s (step %d)", snap, rank_state["step"])
        return rank_state, weights

    def _load_resharded(self, snap: Path, backend) -> None:
        """Rank 0 converts the snapshot to a universal checkpoint beside it; every rank loads its new
        partition from it; rank 0 then deletes it (the snapshot itself is left as it was)."""
        universal = reshard.universal_folder(snap)
        if self.dist.is_main:
            reshard.convert_to_universal(snap)
            check_snapshot_files(universal)  # DeepSpeed's universal loader unpickles in full
        barrier(self.dist)
        backend.load_universal(universal)
        barrier(self.dist)
        if self.dist.is_main:
            shutil.rmtree(universal, ignore_errors=True)


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
