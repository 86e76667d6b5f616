"""R fine-tunes batched (stacked weights, vmap; hybengine/finetune/batched.py) against the same R run one
after another, in one process, on this device; plus what `sweep.runner=auto` picks here and why.

Both sides train the same R runs (scratch starts, seeds 0..R-1, budgets cycled from the sweep config)
for --steps steps: the sequential side through `run_training` exactly as the sweep's sequential runner
does (set-up, loader, final snapshot included), the batched side through `run_batched`. Evaluation is
left out of both (it is per run either way). speedup = sequential seconds / batched seconds, measured
side by side in this run. Rows are appended to benchmarks/results/sweep.csv with the device, versions,
date and commit.

    python benchmarks/bench_sweep.py [--config configs/finetune/scratch_assay_sweep.yaml] [--R 12] [--steps 5]
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import append_rows, commit  # noqa: E402

from hybengine.config import load_config  # noqa: E402
from hybengine.finetune.batched import run_batched  # noqa: E402
from hybengine.finetune.runner import prepare_finetune  # noqa: E402
from hybengine.finetune.sweep import choose_runner  # noqa: E402
from hybengine.runtime.distributed import (
    device_name,  # noqa: E402
    pick_device,  # noqa: E402
)
from hybengine.training_loop import run_training  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIELDS = ["bench", "R", "steps", "channels", "channel_mult", "batch", "crop", "sequential_s", "batched_s",
          "speedup", "auto_choice", "auto_reason", "device", "torch", "date", "commit"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/finetune/scratch_assay_sweep.yaml")
    p.add_argument("--R", type=int, default=12)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--out", default=str(REPO / "benchmarks/results/sweep.csv"))
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    logging.getLogger("hybengine").setLevel(logging.WARNING)
    base = load_config(args.config, [*args.overrides, f"train.steps={args.steps}", "train.ckpt_every=0",
                                     "train.progress=false", "train.log_every=1000000"])
    budgets = base.sweep.budgets or [1]
    device = pick_device(0)
    with tempfile.TemporaryDirectory() as tmp:
        members = []
        for r in range(args.R):
            cfg = dataclasses.replace(
                base, finetune=dataclasses.replace(base.finetune, checkpoint="", budget=budgets[r % len(budgets)],
                                                   seed=r),
                train=dataclasses.replace(base.train, out_dir=f"{tmp}/run{r}"))
            members.append(prepare_finetune(cfg))
        run_batched(members[:2])  # warm-up of both paths (allocator, first-call costs), not timed
        warm = members[0][0]  # into a folder of its own: the timed run below must start fresh
        run_training(dataclasses.replace(warm, train=dataclasses.replace(warm.train, out_dir=f"{tmp}/warm-up")),
                     init_weights=None, console_logging=False)

        t0 = time.perf_counter()
        for c, w in members:
            run_training(c, init_weights=w, console_logging=False)
        if device.type == "cuda":
            torch.cuda.synchronize()
        sequential = time.perf_counter() - t0
        t0 = time.perf_counter()
        run_batched(members)
        if device.type == "cuda":
            torch.cuda.synchronize()
        batched = time.perf_counter() - t0
        choice, reason = choose_runner("auto", members[0][0], args.R, device)

    m = members[0][0]
    row = {"bench": "finetune_runs", "R": args.R, "steps": args.steps, "channels": m.model.channels or "preset",
           "channel_mult": " ".join(map(str, m.model.channel_mult)) or "preset", "batch": m.train.batch_size,
           "crop": m.data.crop, "sequential_s": f"{sequential:.3f}", "batched_s": f"{batched:.3f}",
           "speedup": f"{sequential / batched:.3f}", "auto_choice": choice, "auto_reason": reason,
           "device": device_name(device), "torch": torch.__version__,
           "date": datetime.date.today().isoformat(), "commit": commit()}
    append_rows(Path(args.out), [{key: row[key] for key in FIELDS}])
    print(f"{args.R} fine-tunes x {args.steps} steps on {row['device']}: sequential {sequential:.2f} s, "
          f"batched {batched:.2f} s, speedup {sequential / batched:.2f}x; auto picks {choice} ({reason})")


if __name__ == "__main__":
    main()
