"""Fine-tune entry point: one pretrained (or scratch) model on N labeled target images, for a seed.

    python -m hybengine.finetune --config configs/finetune/scratch_assay_oblique.yaml \
        finetune.checkpoint=runs/pretrain_hybrid finetune.budget=2 finetune.seed=1
Writes Dice and IoU per class on the target test split to <train.out_dir>/result.json.
"""
from __future__ import annotations

import sys

from hybengine.config import ConfigError, dumps, load_config
from hybengine.train import parse_args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(dumps(cfg), end="")
        return 0
    from hybengine.finetune_runner import run_finetune

    run_finetune(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
