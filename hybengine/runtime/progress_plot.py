"""A run's training curves as one picture, `<run>/progress.png`, redrawn from its metrics records.

Panels: the loss and its terms (log scale), images per second, the learning rate, and, where records
carry one, a validation Dice (`val_dice`). Drawn with matplotlib's Agg canvas (no pyplot, no global
backend); without matplotlib no picture is written and the run goes on.
"""
from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

from .atomic import atomic_write_bytes

log = logging.getLogger("hybengine.progress")
LOSS_TERMS = ("loss", "denoise", "mask")


def render(records: list[dict], title: str) -> bytes | None:
    """PNG bytes of the curves in `records` (metrics.jsonl lines), or None without matplotlib/records."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    rows = [r for r in records if "step" in r]
    if not rows:
        return None
    panels = [("loss (log scale)", LOSS_TERMS, True), ("images / s", ("images_per_s",), False),
              ("learning rate", ("lr",), False)]
    if any("val_dice" in r for r in rows):
        panels.append(("validation Dice", ("val_dice",), False))
    fig = Figure(figsize=(4.0 * len(panels), 3.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    for ax, (name, keys, log_y) in zip(fig.subplots(1, len(panels)), panels, strict=True):
        for key in keys:
            pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and
                   (not log_y or r[key] > 0)]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="." if len(pts) < 30 else None, label=key)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if log_y and ax.lines:
            ax.set_yscale("log")
        if len(ax.lines) > 1:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def read_records(metrics: Path) -> list[dict]:
    """The readable lines of a metrics.jsonl (a torn last line of a killed run is skipped)."""
    out = []
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def write_progress_png(run_dir: Path, records: list[dict] | None = None) -> Path | None:
    """Draws `<run_dir>/progress.png` from `records` (default: its metrics.jsonl); returns the path
    written, or None when there is nothing to draw or no matplotlib."""
    run_dir = Path(run_dir)
    png = render(read_records(run_dir / "metrics.jsonl") if records is None else records, run_dir.name)
    if png is None:
        return None
    atomic_write_bytes(run_dir / "progress.png", png)
    os.chmod(run_dir / "progress.png", 0o644)  # a picture for people: readable like the other run files
    return run_dir / "progress.png"
