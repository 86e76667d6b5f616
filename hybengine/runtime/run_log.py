"""Run output on rank 0: a JSONL metrics log, its curves as progress.png, optional TensorBoard events,
a text log, and a rich progress bar."""
from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from .atomic import atomic_write_text
from .progress_plot import read_records, write_progress_png

log = logging.getLogger("hybengine")
PLOT_EVERY_S = 30.0  # progress.png: redrawn at a log step at most this often, and at the end (drawing is costly)


def setup_logging(out_dir: Path | None, rank: int, level: int = logging.INFO) -> None:
    """Rich console logging on rank 0 (warnings only on others) and a run.log file in out_dir."""
    root = logging.getLogger("hybengine")
    root.setLevel(level)
    root.propagate = False
    for h in list(root.handlers):
        root.removeHandler(h)
    width = None if sys.stderr.isatty() else 140  # logs piped to a file keep one line per record
    console = RichHandler(console=Console(stderr=True, width=width), show_path=False, markup=False)
    console.setLevel(level if rank == 0 else logging.WARNING)
    root.addHandler(console)
    if out_dir is not None and rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(out_dir / "run.log")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(fh)


def _tensorboard_writer(run_dir: Path):
    """A SummaryWriter into <run_dir>/tensorboard when the run's config.yaml sets train.tensorboard."""
    import yaml

    config = run_dir / "config.yaml"
    wanted = config.is_file() and (yaml.safe_load(config.read_text()) or {}).get("train", {}).get("tensorboard")
    if not wanted:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("train.tensorboard=true but the tensorboard package is not installed "
                    "(pip install tensorboard); the curves go to progress.png only")
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def _records_up_to(path: Path, step: int) -> list[dict]:
    """The records of metrics.jsonl up to `step`; the file is rewritten (atomically) without the later
    ones and without a torn last line."""
    if not path.is_file():
        return []
    text = path.read_text()
    records = read_records(path)
    kept = [r for r in records if not isinstance(r.get("step"), int) or r["step"] <= step]
    if len(kept) != len(records) or (text and not text.endswith("\n")):
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
        if len(kept) != len(records):
            log.info("%s: dropped the %d record(s) after step %d (the resumed snapshot's step)", path,
                     len(records) - len(kept), step)
    return kept


class MetricsLog:
    """Appends one JSON object per line and redraws the run's progress.png from all of them (those of
    an earlier, resumed part included); also drives the progress bar, and TensorBoard where asked for.
    A resumed run continues at `start_step`: records of later steps (logged after the snapshot it resumes
    from, then lost with the process) are dropped first, so that no step is recorded twice."""

    def __init__(self, path: Path | None, total_steps: int, start_step: int, show_progress: bool,
                 plot: bool = True):
        self.path = path
        self.records = _records_up_to(path, start_step) if path is not None else []
        self.file = open(path, "a") if path is not None else None  # noqa: SIM115 - closed in close()
        self.tensorboard = _tensorboard_writer(path.parent) if path is not None else None
        self.plot_at = float("-inf")  # perf_counter of the last progress.png
        self.plotting = plot and path is not None and importlib.util.find_spec("matplotlib") is not None
        self.progress = None
        if show_progress and sys.stderr.isatty():
            self.progress = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=Console(stderr=True),
            )
            self.task = self.progress.add_task("train", total=total_steps, completed=start_step, info="")
            self.progress.start()
        self.t0 = time.perf_counter()

    def write(self, record: dict) -> None:
        record = {"time": round(time.perf_counter() - self.t0, 3), **record}
        if self.file is not None:
            try:
                self.file.write(json.dumps(record) + "\n")
                self.file.flush()
            except OSError as e:  # a full disk: name the file (the bare error names none)
                file, self.file = self.file, None
                with contextlib.suppress(OSError):  # its buffer cannot be written either
                    file.close()
                raise OSError(e.errno, f"{e.strerror or e} while writing {self.path}; the last snapshot is "
                              f"intact: free space, then continue with --resume {self.path.parent}") from e
            self.records.append(record)
            if time.perf_counter() - self.plot_at >= PLOT_EVERY_S:
                self._plot()
        if self.tensorboard is not None and "step" in record:
            for key, value in record.items():
                if key not in ("step", "time") and isinstance(value, (int, float)):
                    self.tensorboard.add_scalar(key, value, record["step"])
        if self.progress is not None:
            info = f"loss {record.get('loss', float('nan')):.4f}  {record.get('images_per_s', 0):.0f} img/s"
            self.progress.update(self.task, completed=record["step"], info=info)
        elif "loss" in record:
            log.info("step %d  loss %.4f (denoise %.4f, mask %.4f)  %.1f img/s", record["step"], record["loss"],
                     record["denoise"], record["mask"], record["images_per_s"])

    def _plot(self) -> None:
        """Redraws progress.png; a failure to draw is reported once and never stops the run."""
        if not self.plotting:
            return
        try:
            write_progress_png(self.path.parent, self.records)
        except Exception as e:  # noqa: BLE001 - a picture must not end a training run
            log.warning("progress.png not written (%s: %s); training goes on", type(e).__name__, e)
            self.plotting = False
        self.plot_at = time.perf_counter()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        if self.file is not None:
            try:
                self.file.close()
            except OSError as e:
                raise OSError(e.errno, f"{e.strerror or e} while writing {self.path}") from e
            self._plot()
        if self.tensorboard is not None:
            self.tensorboard.close()
