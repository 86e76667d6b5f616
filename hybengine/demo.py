"""The demo job (README command 1): hybrid pretraining on the fluorescence domain of the bundled
scratch assay, then fine-tunes on a few labeled oblique-light images from the hybrid checkpoint and
from scratch (same seeds, so each seed is a pair), then a Dice table on the oblique test frames.

    python -m hybengine.demo [--budgets 1] [--seeds 0 1 2] [--out runs/demo] [pretrain.key=value ...]

Sized for about 10 minutes on a slow 2-core CPU (one that runs torch's AVX2 path at about 1.7 s per
pretraining step of batch 8): DEMO_PRETRAIN and DEMO_FINETUNE below shrink the experiment configs'
step counts. After its first pretraining steps the demo prints how long the whole job will take on
this machine, and at the end how long it took.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from hybengine.config import load_config
from hybengine.experiment.stats import paired_contrast
from hybengine.finetune.runner import run_finetune
from hybengine.runtime.atomic import atomic_write_text
from hybengine.runtime.checkpoint import complete_snapshots
from hybengine.runtime.run_folder import clear_run_files
from hybengine.training_loop import LoopHooks, run_training

PRETRAIN = "configs/pretrain/scratch_assay_hybrid.yaml"
FINETUNE = "configs/finetune/scratch_assay_oblique.yaml"
CLASSES = ("background", "cell body", "nucleus")
# The demo's size, as overrides of the two configs above (the experiments keep their full length).
DEMO_PRETRAIN = ["train.steps=200", "train.ckpt_every=100", "train.ema_halflife_steps=25",
                 "optim.warmup_steps=25"]
DEMO_FINETUNE = ["train.steps=50", "train.batch_size=4", "train.ema_halflife_steps=10", "optim.warmup_steps=10"]
TIMED_STEPS = (2, 7)  # the estimate times pretraining steps 3..7 (the first two warm up)
EVAL_SECONDS = 5.0  # rough cost of one fine-tune's test-split evaluation and set-up, on a slow host

console = Console(stderr=True)


class Estimate:
    """Times the first pretraining steps and extrapolates the whole job from them (printed once)."""

    def __init__(self, pre_steps: int, pre_batch: int, ft_steps: int, ft_batch: int, n_finetunes: int):
        self.pre_steps, self.n_finetunes = pre_steps, n_finetunes
        self.ft_units = ft_steps * ft_batch / pre_batch  # a fine-tune step costs its batch's share
        self.t_start = time.perf_counter()
        self.marks: dict[int, float] = {}
        self.seconds: float | None = None

    def on_step(self, step: int) -> None:
        if step in TIMED_STEPS:
            self.marks[step] = time.perf_counter()
        if step == TIMED_STEPS[1]:
            per_step = (self.marks[step] - self.marks[TIMED_STEPS[0]]) / (TIMED_STEPS[1] - TIMED_STEPS[0])
            elapsed = self.marks[step] - self.t_start
            rest = per_step * ((self.pre_steps - step) + self.n_finetunes * self.ft_units)
            self.seconds = elapsed + rest + self.n_finetunes * EVAL_SECONDS
            console.print(f"[bold]demo: {per_step:.2f} s per pretraining step here, so the whole job takes about "
                          f"{self.seconds / 60:.1f} minutes[/bold] ({self.pre_steps} pretraining steps, "
                          f"{self.n_finetunes} fine-tunes)")


def print_paired(records: list[dict]) -> None:
    """Hybrid minus scratch, paired seed by seed (the same labeled images and fine-tune seed on both
    sides), with a 95 % bootstrap interval over seeds and the signed-rank p (hybengine/experiment/stats.py)."""
    for budget in sorted({r["budget"] for r in records}):
        c = paired_contrast(records, "hybrid", "scratch", budget)
        if c["label_seeds"]:
            console.print(f"{budget} label(s): hybrid - scratch mean foreground Dice {c['mean']:+.3f} "
                          f"[95% CI {c['ci_low']:+.3f}, {c['ci_high']:+.3f}], signed-rank p {c['p']:.2f}, "
                          f"over {c['label_seeds']} seed(s)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budgets", type=int, nargs="+", default=[1], help="labeled target images per fine-tune")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one hybrid/scratch pair per seed")
    p.add_argument("--out", default="runs/demo", help="folder for the runs and summary.json")
    p.add_argument("overrides", nargs="*", help="pretrain.<section.key>=v or finetune.<section.key>=v")
    args = p.parse_args(argv)
    pre_over = [o.removeprefix("pretrain.") for o in args.overrides if o.startswith("pretrain.")]
    ft_over = [o.removeprefix("finetune.") for o in args.overrides if o.startswith("finetune.")]
    out = Path(args.out)

    t0 = time.perf_counter()
    pre = load_config(PRETRAIN, [*DEMO_PRETRAIN, *pre_over, f"train.out_dir={out / 'pretrain_hybrid'}"])
    ft0 = load_config(FINETUNE, [*DEMO_FINETUNE, *ft_over])
    n_ft = 2 * len(args.budgets) * len(args.seeds)
    console.print(f"[bold]demo: sized for about 10 minutes on a 2-core CPU; an estimate for this machine "
                  f"follows its first {TIMED_STEPS[1]} pretraining steps[/bold]")
    estimate = Estimate(pre.train.steps, pre.train.batch_size, ft0.train.steps, ft0.train.batch_size, n_ft)
    pre_dir = Path(pre.train.out_dir)  # a demo run again picks up its own finished parts
    done = complete_snapshots(pre_dir / "checkpoints") if pre_dir.is_dir() else []
    if pre_dir.is_dir() and not done:
        clear_run_files(pre_dir)
    run_training(pre, resume=str(pre_dir) if done else None, hooks=LoopHooks(on_step=estimate.on_step))

    records = []
    for init, ckpt in (("hybrid", pre.train.out_dir), ("scratch", "")):
        for budget in args.budgets:
            for seed in args.seeds:
                t_ft = time.perf_counter()
                ft = load_config(FINETUNE, [*DEMO_FINETUNE, *ft_over, f"finetune.checkpoint={ckpt}",
                                            f"finetune.budget={budget}", f"finetune.seed={seed}",
                                            f"train.out_dir={out / f'finetune_{init}_b{budget}_s{seed}'}"])
                ft_dir = Path(ft.train.out_dir)
                if (ft_dir / "result.json").is_file():  # finished by an earlier demo run
                    records.append({**json.loads((ft_dir / "result.json").read_text()), "init": init})
                    continue
                if ft_dir.is_dir():
                    clear_run_files(ft_dir)
                records.append({**run_finetune(ft), "init": init})
                if len(records) == 1 and n_ft > 1:  # the estimate again, from a whole fine-tune
                    left = (n_ft - 1) * (time.perf_counter() - t_ft)
                    console.print(f"[bold]demo: {(time.perf_counter() - t0) / 60:.1f} minutes so far, about "
                                  f"{left / 60:.1f} more for the other {n_ft - 1} fine-tunes[/bold]")

    table = Table(title="Oblique-light test frames (2, 5, 8): Dice after fine-tuning")
    for col in ("init", "labels", "seed", *CLASSES, "mean fg"):
        table.add_column(col, justify="right")
    for r in records:
        table.add_row(r["init"], str(r["budget"]), str(r["seed"]), *(f"{d:.3f}" for d in r["dice"]),
                      f"{r['mean_fg_dice']:.3f}")
    Console().print(table)
    print_paired(records)
    wall = time.perf_counter() - t0
    said = f"; estimated {estimate.seconds / 60:.1f}" if estimate.seconds is not None else ""
    console.print(f"demo: took {wall / 60:.1f} minutes{said}")
    summary = [{k: r[k] for k in ("init", "budget", "seed", "dice", "iou", "mean_fg_dice", "labeled")}
               for r in records]
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
