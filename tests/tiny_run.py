"""A tiny, fast run configuration shared by the engine tests (imported, not collected)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO_SOURCE = REPO / "demo_data/scratch-assay/fluorescence"
DEMO_TARGET = REPO / "demo_data/scratch-assay/oblique"


def tiny_overrides(out_dir: Path, steps: int = 6, **extra) -> list[str]:
    base = {
        "data.root": str(DEMO_SOURCE), "data.crop": 32, "model.channels": 8, "model.channel_mult": "[1,2]",
        "model.groups": 4, "train.batch_size": 2, "train.steps": steps, "train.log_every": 2,
        "train.ckpt_every": 3, "train.out_dir": str(out_dir), "train.progress": "false",
        "train.plot": "false",  # a matplotlib draw per run is CPU the suite need not pay (test_progress_plot draws it)
        "train.ema_halflife_steps": 2, "optim.warmup_steps": 2, "train.seed": 3,
        "train.threads": 1,  # two test workers share two cores: a second thread per run only waits
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def run_cli(args: list[str], env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Runs `python <args>` from the repo root in a fresh process."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
