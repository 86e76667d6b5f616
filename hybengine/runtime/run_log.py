"""Run output on rank 0: a JSONL metrics log, a text log, and a rich progress bar."""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

log = logging.getLogger("hybengine")


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


class MetricsLog:
    """Appends one JSON object per line; also drives the progress bar."""

    def __init__(self, path: Path | None, total_steps: int, start_step: int, show_progress: bool):
        self.path = path
        self.file = open(path, "a") if path is not None else None  # noqa: SIM115 - closed in close()
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
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        if self.progress is not None:
            info = f"loss {record.get('loss', float('nan')):.4f}  {record.get('images_per_s', 0):.0f} img/s"
            self.progress.update(self.task, completed=record["step"], info=info)
        elif "loss" in record:
            log.info("step %d  loss %.4f (denoise %.4f, mask %.4f)  %.1f img/s", record["step"], record["loss"],
                     record["denoise"], record["mask"], record["images_per_s"])

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        if self.file is not None:
            self.file.close()
