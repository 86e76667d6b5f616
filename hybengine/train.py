"""Pretraining entry point.

    python hybengine/train.py --config configs/pretrain/scratch_assay_hybrid.yaml [key=value ...]
    deepspeed --num_gpus 2 hybengine/train.py --config ... train.backend=deepspeed
    python hybengine/train.py --config ... --dry-run          # print the resolved config and stop
    python hybengine/train.py --resume runs/x [train.steps=N] # continue a killed run exactly (saved config)
Bad config, data, checkpoints or run folders end in one line on stderr and exit code 2 (--debug: traceback).
"""
from __future__ import annotations

import sys

from hybengine.cli import guarded, parse_args, resolve


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__, argv)
    cfg = resolve(args, "train")
    if isinstance(cfg, int):
        return cfg
    from hybengine.training_loop import run_training

    return guarded("train", args.debug, lambda: run_training(cfg, resume=args.resume) and None)


if __name__ == "__main__":
    sys.exit(main())
