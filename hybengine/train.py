"""Pretraining entry point.

    python hybengine/train.py --config configs/pretrain/scratch_assay_hybrid.yaml [key=value ...]
    deepspeed --num_gpus 2 hybengine/train.py --config ... train.engine=deepspeed
    python hybengine/train.py --config ... --dry-run          # print the resolved config and stop
    python hybengine/train.py --config ... --resume runs/x    # continue a killed run exactly
"""
from __future__ import annotations

import sys

from hybengine.cli import parse_args, resolve


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__, argv)
    cfg = resolve(args)
    if isinstance(cfg, int):
        return cfg
    from hybengine.training_loop import run_training

    run_training(cfg, resume=args.resume)
    return 0


if __name__ == "__main__":
    sys.exit(main())
