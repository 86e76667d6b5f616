"""The rules of a run folder (`train.out_dir`): where one may be, what marks a run in it, when a run may
go into it, what `--resume` continues, and the saved config that `--resume RUN` starts from.

- A run folder is a folder of its own: not, once resolved, the current folder, the home folder, the
  folder holding hybengine or one above any of them (`/`).
- A fresh run goes only into a folder that holds no run. A folder with a run's config but no complete
  snapshot (a start that failed or was killed before its first snapshot) holds nothing to continue:
  the same command, or `--resume`, starts it over from step 0 (its metrics records are dropped);
  another config is refused.
- `--resume RUN` continues the newest complete snapshot; the caller's `compare` says which keys differ
  from the saved config (only resume-free keys may; the run log names each one that does).
- `saved_run_config(RUN)`: the config `--resume RUN` starts from: the snapshot's, else the run's
  config.yaml (a run with no snapshot yet), else a sweep's sweep.yaml.
Knows configs only as dicts: the comparison is the caller's (hybengine/config.py `compare_saved`).
"""
from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import yaml

from .checkpoint import check_snapshot_files, find_snapshot, read_snapshot_config

RUN_FILES = ("config.yaml", "metrics.jsonl", "run.log", "checkpoints")  # what a run writes in its folder
# saved config dict -> ("key: saved -> now" of keys that may not change, of those that may and did)
Compare = Callable[[dict], tuple[list[str], list[str]]]


class RunFolderError(ValueError):
    """train.out_dir cannot take this run (it is a file, or holds another run and this is not a resume),
    or `--resume` names no run."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; str() says where the run stopped and how to continue it."""

    def __init__(self, step: int, ckpt_root: Path):
        latest = ckpt_root / "latest"
        saved = (f"its last complete snapshot {latest.read_text().strip()} is intact" if latest.is_file()
                 else "no snapshot was complete yet (a resume starts it over)")
        super().__init__(f"stopped by Ctrl-C at step {step}; {saved}: continue with --resume {ckpt_root.parent}")


def check_folder_path(key: str, folder: str) -> None:
    """A run folder must be a folder of its own: not, once resolved (`./`, `..`, symlinks), the current
    folder, the home folder, the folder holding hybengine, or any folder above one of them (`/`)."""
    where = Path(folder).resolve()
    places = [("the folder holding hybengine", Path(__file__).resolve().parents[2])]
    for name, where_is in (("the current folder", Path.cwd), ("the home folder", Path.home)):
        try:
            places.append((name, where_is().resolve()))
        except (OSError, RuntimeError):  # a deleted current folder, no HOME: nothing to compare with
            pass
    for name, place in places:
        if where == place or where in place.parents:
            what = "is" if where == place else "is a folder above"
            raise RunFolderError(f"{key}={folder!r} resolves to {where}, which {what} {name} ({place}); a run "
                                 "writes config.yaml, metrics.jsonl, run.log and checkpoints/ into its folder: "
                                 f"name a folder of its own, e.g. {key}=runs/my_run")


def run_held(out_dir: Path) -> list[str]:
    """What in out_dir marks a run: its config, a non-empty metrics log, snapshots (a run.log alone, or an
    empty checkpoints/ folder, is a start that failed)."""
    held = [name for name in ("config.yaml", "metrics.jsonl") if (out_dir / name).is_file()
            and (out_dir / name).stat().st_size > 0]
    if has_snapshot(out_dir):
        held.append("checkpoints/")
    return held


def has_snapshot(out_dir: Path) -> bool:
    """Whether out_dir holds a complete snapshot that `--resume` would continue."""
    try:
        find_snapshot(out_dir)
    except FileNotFoundError:
        return False
    return True


def _saved_yaml(file: Path) -> dict:
    try:
        saved = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise RunFolderError(f"{file} cannot be read ({str(e).splitlines()[0][:160]}); it is not a config "
                             "written by hybengine") from None
    if not isinstance(saved, dict):
        raise RunFolderError(f"{file} does not hold a mapping of config sections; not a config written by hybengine")
    return saved


def check_run_folder(out_dir: Path, resume: str | None, compare: Compare) -> tuple[Path | None, list[str]]:
    """Before anything is written or loaded: out_dir can take the run, and a resume continues the same
    run (config compared first, so a changed architecture never reaches load_state_dict). Returns (the
    snapshot folder to resume from, or None for a start from step 0; notes for the run log)."""
    check_folder_path("train.out_dir", str(out_dir))
    if out_dir.exists() and not out_dir.is_dir():
        raise RunFolderError(f"train.out_dir={str(out_dir)!r} is a file, not a folder; name a run folder")
    held = run_held(out_dir)
    if resume:
        if not Path(resume).exists():
            raise RunFolderError(f"--resume {resume}: no such folder; name the run folder of the run to continue")
        run = run_folder_of(resume)
        if not has_snapshot(Path(resume)) and run is not None and (run / "config.yaml").is_file():
            return _start_over(run, out_dir, compare, f"--resume {resume}: it has no complete snapshot yet")
        snap = find_snapshot(resume)
        if held and out_dir.resolve() not in snap.resolve().parents:
            raise RunFolderError(f"train.out_dir={str(out_dir)!r} holds another run ({', '.join(held)}) than the "
                                 f"snapshot {snap} being resumed; resume into its own run folder or a new one")
        fixed, free = compare(read_snapshot_config(snap))
        if fixed:
            raise RunFolderError(f"--resume with a different config would not continue the same run "
                                 f"({', '.join(fixed)}); only resume-free keys may change on --resume (resume "
                                 "with the run folder alone and its saved config is used)")
        check_snapshot_files(snap)  # every file readable the safe way, before any loader (DeepSpeed's) runs
        return snap, [f"resumed with {d} (changed on --resume)" for d in free]
    if "checkpoints/" in held:
        raise RunFolderError(
            f"train.out_dir={str(out_dir)!r} already holds a run ({', '.join(held)}); continue it with --resume "
            f"{out_dir}, or start over deliberately by deleting that folder (or choose another train.out_dir)")
    if held:
        return _start_over(out_dir, out_dir, compare, "it holds a run with no complete snapshot")
    return None, []


def _start_over(run: Path, out_dir: Path, compare: Compare, why: str) -> tuple[None, list[str]]:
    """A run folder with a config but no complete snapshot: the same run starts over from step 0."""
    if run.resolve() != out_dir.resolve():
        raise RunFolderError(f"{why}, and train.out_dir={str(out_dir)!r} is another folder; resume into the "
                             f"run's own folder ({run})")
    saved = run / "config.yaml"
    if saved.is_file():
        fixed, _ = compare(_saved_yaml(saved))
        if fixed:
            raise RunFolderError(
                f"train.out_dir={str(out_dir)!r} holds the start of another run ({', '.join(fixed)}) that never "
                "saved a snapshot; delete that folder to start this run there, or choose another train.out_dir")
    return None, [f"{run}: {why}; starting the run over from step 0 (no step of it was saved)"]


def clear_run_files(out_dir: Path) -> None:
    """Deletes what a run wrote into out_dir (config, metrics, log, snapshots), nothing else."""
    for name in RUN_FILES:
        path = out_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def run_folder_of(resume: str | Path) -> Path | None:
    """The run folder that `--resume` names: the folder itself, or the one above checkpoints/ or above a
    snapshot folder; None if it is none of these."""
    path = Path(resume)
    if path.name == "checkpoints":
        return path.parent
    if (path / "weights.pt").is_file() and path.parent.name == "checkpoints":
        return path.parent.parent
    if any((path / name).exists() for name in ("config.yaml", "checkpoints", "sweep.yaml")):
        return path
    return None


def saved_run_config(resume: str | Path) -> dict:
    """The config `--resume RUN` continues: the newest complete snapshot's, else RUN/config.yaml (a run
    with no snapshot yet: it starts over), else RUN/sweep.yaml (a sweep). One line if there is none."""
    path = Path(resume)
    if not path.exists():
        raise RunFolderError(f"--resume {resume}: no such folder; name the run folder (train.out_dir or "
                             "sweep.out_dir) of the run to continue")
    if (path / "sweep.yaml").is_file() and not (path / "checkpoints").exists():
        return _saved_yaml(path / "sweep.yaml")
    try:
        return read_snapshot_config(find_snapshot(path))
    except FileNotFoundError:
        pass
    run = run_folder_of(path) or path
    if (run / "config.yaml").is_file():
        return _saved_yaml(run / "config.yaml")
    raise RunFolderError(f"--resume {resume}: no run there (no complete snapshot, no config.yaml, no "
                         "sweep.yaml); name the run folder of the run to continue")
