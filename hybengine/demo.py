"""The demo job (README command 1): the best method the evidence supports on the bundled pair, at one
pretraining seed, against supervised pretraining and scratch. From `configs/experiments/scratch_assay_lwf.yaml`
(3 pretraining seeds x 4 label seeds, docs/results/scratch_assay_lwf/): hybrid pretraining on the
fluorescence domain of the scratch assay segments oblique light with no target label, where supervised
pretraining predicts background, and a fine-tune that keeps the start's predictions on the unlabeled
oblique train images (Learning without Forgetting, `finetune.distill`) carries that through; supervised
pretraining is fine-tuned the usual way, the rule that suits it (`supervised-vanilla` there), and scratch
beside both (same label seeds, so each seed is a pair). Then the Dice table, the paired differences and
each start's fine-tune minus its own zero-shot score.

    python -m hybengine.demo [--budgets 0 1] [--seeds 0 1 2] [--out runs/demo] [pretrain.key=value ...]

After its first pretraining steps it prints how long the whole job will take on this machine, and at the
end how long it took.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from hybengine.config import load_config
from hybengine.experiment.pipeline import kind_overrides
from hybengine.experiment.stats import paired_contrast, score_of, versus_zero_shot
from hybengine.finetune.runner import run_finetune
from hybengine.runtime.atomic import atomic_write_text
from hybengine.runtime.checkpoint import complete_snapshots, load_weights
from hybengine.runtime.run_folder import RunFolderError, clear_run_files
from hybengine.training_loop import LoopHooks, run_training

EXPERIMENT = "configs/experiments/scratch_assay_lwf.yaml"
# pretrained starts and the experiment's fine-tune variant each is fine-tuned with (None: the experiment's
# own rule, Learning without Forgetting); scratch is fine-tuned beside them (vanilla: no start to keep)
STARTS = {"hybrid": None, "supervised": "supervised-vanilla"}
CLASSES = ("background", "cell body", "nucleus")
# the demo runs alone: torch's own thread count, not the experiment's one per shard
ALONE = ["train.threads=0"]
TIMED_STEPS = (2, 7)  # the estimate times pretraining steps 3..7 (the first two warm up)
EVAL_SECONDS = 3.0  # rough cost of one test-split evaluation and set-up

console = Console(stderr=True)


class Estimate:
    """Times the first pretraining steps and extrapolates the whole job from them (printed once)."""

    def __init__(self, pre_steps: int, pre_batch: int, ft_steps: int, ft_batch: int, n_finetunes: int,
                 n_evals: int):
        self.pre_steps, self.n_finetunes, self.n_evals = pre_steps, n_finetunes, n_evals
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
            self.seconds = elapsed + rest + self.n_evals * EVAL_SECONDS
            console.print(f"[bold]demo: {per_step:.2f} s per pretraining step here, so the whole job takes about "
                          f"{self.seconds / 60:.1f} minutes[/bold] ({self.pre_steps} pretraining steps, "
                          f"{self.n_finetunes} fine-tunes)")


def print_paired(records: list[dict]) -> None:
    """Hybrid minus supervised and minus scratch per budget, paired seed by seed (the same labeled images
    and fine-tune seed on both sides), with a 95 % bootstrap interval over seeds and the signed-rank p
    (hybengine/experiment/stats.py); then each start's fine-tune minus its own zero-shot score."""
    budgets = sorted({r["budget"] for r in records})
    if 0 in budgets:  # one zero-shot record per start: a difference, no interval
        c = paired_contrast(records, "hybrid", "supervised", 0)
        console.print(f"zero-shot (no label): hybrid - supervised mean foreground Dice {c['mean']:+.3f}")
    for budget in [b for b in budgets if b > 0]:
        for other in ("supervised", "scratch"):
            c = paired_contrast(records, "hybrid", other, budget)
            console.print(f"{budget} label(s): hybrid - {other} mean foreground Dice {c['mean']:+.3f} "
                          f"[95% CI {c['ci_low']:+.3f}, {c['ci_high']:+.3f}], signed-rank p {c['p']:.2f}, "
                          f"over {c['label_seeds']} seed(s)")
    for start in STARTS:
        for budget in [b for b in budgets if b > 0 and 0 in budgets]:
            v = versus_zero_shot(records, start, budget, score_of("dice"))
            if v["label_seeds"]:
                console.print(f"{start}: {budget}-label fine-tune - its zero-shot {v['mean']:+.3f} "
                              f"[95% CI {v['hier_low']:+.3f}, {v['hier_high']:+.3f}] (zero-shot {v['zero_shot']:.3f})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budgets", type=int, nargs="+", default=[0, 1],
                   help="labeled target images per fine-tune (0: each pretrained start as it is)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="label seeds: one pair per seed")
    p.add_argument("--out", default="runs/demo", help="folder for the runs and summary.json")
    p.add_argument("overrides", nargs="*", help="pretrain.<section.key>=v or finetune.<section.key>=v")
    args = p.parse_args(argv)
    pre_over = [o.removeprefix("pretrain.") for o in args.overrides if o.startswith("pretrain.")]
    ft_over = [o.removeprefix("finetune.") for o in args.overrides if o.startswith("finetune.")]
    out = Path(args.out)
    spec = yaml.safe_load(Path(EXPERIMENT).read_text())
    pre_spec, ft_spec = spec["pretrain"], spec["finetune"]

    t0 = time.perf_counter()
    pres = {kind: load_config(pre_spec["config"], [*pre_spec["overrides"], *kind_overrides(spec, kind), "train.seed=0",
                                                   *ALONE, *pre_over, f"train.out_dir={out / f'pretrain_{kind}'}"])
            for kind in STARTS}
    rule = {k: [*ft_spec["overrides"], *(ft_spec["variants"][v]["overrides"] if v else []), *ALONE, *ft_over]
            for k, v in [*STARTS.items(), ("scratch", None)]}
    budgets = sorted(args.budgets)
    trained = [b for b in budgets if b > 0]
    n_ft = (len(STARTS) + 1) * len(trained) * len(args.seeds)
    ft0 = load_config(ft_spec["config"], [*rule["hybrid"], f"finetune.budget={max(trained, default=0)}"])
    ft_steps = ft0.train.steps + ft0.finetune.steps_per_label * (sum(trained) / max(len(trained), 1))
    console.print(f"[bold]demo: {len(STARTS)} pretrainings and {n_ft} fine-tunes; an estimate for this machine "
                  f"follows its first {TIMED_STEPS[1]} pretraining steps[/bold]")
    pre0 = pres["hybrid"].train
    estimate = Estimate(len(STARTS) * pre0.steps, pre0.batch_size, round(ft_steps), ft0.train.batch_size, n_ft,
                        n_ft + len(STARTS) * (0 in budgets))
    stale = False  # a pretraining that takes a step here makes every earlier fine-tune result stale
    for kind, pre in pres.items():
        pre_dir = Path(pre.train.out_dir)  # a demo run again picks up its own finished parts
        done = complete_snapshots(pre_dir / "checkpoints") if pre_dir.is_dir() else []
        if pre_dir.is_dir() and not done:
            clear_run_files(pre_dir)
        hooks = LoopHooks(on_step=estimate.on_step) if kind == "hybrid" else None
        try:
            step = run_training(pre, resume=str(pre_dir) if done else None, hooks=hooks).step
        except RunFolderError as e:
            console.print(f"demo error: {e}. {out} holds a demo run made with other settings: delete it or "
                          "give --out another folder")
            return 2
        stale |= not done or load_weights(done[-1])["step"] != step

    records = []
    t_ft = time.perf_counter()
    for init, ckpt in [*((k, pres[k].train.out_dir) for k in STARTS), ("scratch", "")]:
        for budget in budgets:
            if budget == 0 and not ckpt:
                continue  # an untrained net has no zero-shot score
            for seed in args.seeds[:1] if budget == 0 else args.seeds:  # zero-shot reads no label: once
                ft = load_config(ft_spec["config"], [
                    *rule[init], f"finetune.checkpoint={ckpt}", f"finetune.budget={budget}", f"finetune.seed={seed}",
                    f"train.out_dir={out / f'finetune_{init}_b{budget}_s{seed}'}"])
                ft_dir = Path(ft.train.out_dir)
                if (ft_dir / "result.json").is_file() and not stale:  # finished by an earlier demo run
                    records.append({**json.loads((ft_dir / "result.json").read_text()), "init": init})
                    continue
                if ft_dir.is_dir():
                    clear_run_files(ft_dir)
                records.append({**run_finetune(ft, console_logging=False), "init": init})
    console.print(f"[bold]demo: fine-tunes and zero-shot scores took {(time.perf_counter() - t_ft) / 60:.1f} "
                  f"minutes[/bold]")

    table = Table(title="Oblique-light test frames (2, 5, 8): Dice (0 labels: the start as it is)")
    for col in ("init", "labels", "seed", *CLASSES, "mean fg"):
        table.add_column(col, justify="right")
    for r in records:
        table.add_row(r["init"], str(r["budget"]), str(r["seed"]) if r["budget"] else "-",
                      *(f"{d:.3f}" for d in r["dice"]), f"{r['mean_fg_dice']:.3f}")
    Console().print(table)
    console.print("hybrid: fine-tuned keeping its start's predictions on the unlabeled oblique train images "
                  "(finetune.distill); supervised and scratch: fine-tuned the usual way")
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
