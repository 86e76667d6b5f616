"""Fine-tune entry point: one fine-tune, or a label-budget sweep when `sweep.budgets` is set.

    python -m hybengine.finetune --config configs/finetune/scratch_assay_oblique.yaml \
        finetune.checkpoint=runs/pretrain_hybrid finetune.budget=2 finetune.seed=1
Writes Dice, IoU, HD95 and ASSD per class on the target test split to <train.out_dir>/result.json.

    python -m hybengine.finetune --resume runs/finetune_x [train.steps=...]
Continues a killed fine-tune exactly (its saved config; overrides may change resume-free keys only).

    python -m hybengine.finetune --config configs/finetune/scratch_assay_sweep.yaml
Runs sweep.inits x sweep.budgets x sweep.seeds fine-tunes (resumable) and writes the per-image CSV,
the mean +- std table and the plot under sweep.out_dir (hybengine/finetune/sweep.py); run it again,
or with `--resume <sweep.out_dir>` alone, to continue an interrupted sweep.
"""
from __future__ import annotations

import sys

from hybengine.cli import guarded, parse_args, resolve


def main(argv: list[str] | None = None) -> int:
    from hybengine.finetune.runner import command_config

    args = parse_args(__doc__, argv)
    cfg = resolve(args, "finetune", user_config=command_config)
    if isinstance(cfg, int):
        return cfg
    if cfg.sweep.budgets:
        from hybengine.finetune.sweep import run_sweep

        return guarded("sweep", args.debug, lambda: run_sweep(cfg) and None)
    from hybengine.finetune.runner import run_finetune

    return guarded("finetune", args.debug, lambda: run_finetune(cfg, resume=args.resume) and None)


if __name__ == "__main__":
    sys.exit(main())
