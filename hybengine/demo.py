"""The demo job (README command 1): hybrid pretraining on the fluorescence domain of the bundled
scratch assay, then fine-tunes on a few labeled oblique-light images from the hybrid checkpoint and
from scratch, then a Dice table on the oblique test frames.

    python -m hybengine.demo [--budgets 1] [--seeds 0] [--out runs/demo] [pretrain.key=value ...]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from hybengine.config import load_config
from hybengine.finetune.runner import run_finetune
from hybengine.runtime.atomic import atomic_write_text
from hybengine.training_loop import run_training

PRETRAIN = "configs/pretrain/scratch_assay_hybrid.yaml"
FINETUNE = "configs/finetune/scratch_assay_oblique.yaml"
CLASSES = ("background", "cell body", "nucleus")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budgets", type=int, nargs="+", default=[1])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--out", default="runs/demo")
    p.add_argument("overrides", nargs="*", help="pretrain.<section.key>=v or finetune.<section.key>=v")
    args = p.parse_args(argv)
    pre_over = [o.removeprefix("pretrain.") for o in args.overrides if o.startswith("pretrain.")]
    ft_over = [o.removeprefix("finetune.") for o in args.overrides if o.startswith("finetune.")]
    out = Path(args.out)

    pre = load_config(PRETRAIN, [*pre_over, f"train.out_dir={out / 'pretrain_hybrid'}"])
    run_training(pre)

    records = []
    for init, ckpt in (("hybrid", pre.train.out_dir), ("scratch", "")):
        for budget in args.budgets:
            for seed in args.seeds:
                ft = load_config(FINETUNE, [*ft_over, f"finetune.checkpoint={ckpt}", f"finetune.budget={budget}",
                                            f"finetune.seed={seed}",
                                            f"train.out_dir={out / f'finetune_{init}_b{budget}_s{seed}'}"])
                records.append({**run_finetune(ft), "init": init})

    table = Table(title="Oblique-light test frames (2, 5, 8): Dice after fine-tuning")
    for col in ("init", "labels", "seed", *CLASSES, "mean fg"):
        table.add_column(col, justify="right")
    for r in records:
        table.add_row(r["init"], str(r["budget"]), str(r["seed"]), *(f"{d:.3f}" for d in r["dice"]),
                      f"{r['mean_fg_dice']:.3f}")
    Console().print(table)
    summary = [{k: r[k] for k in ("init", "budget", "seed", "dice", "iou", "mean_fg_dice", "labeled")}
               for r in records]
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
