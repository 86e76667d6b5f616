"""Pretraining entry point.

    python hybengine/train.py --config configs/pretrain/scratch_assay_hybrid.yaml [key=value ...]
    deepspeed --num_gpus 2 hybengine/train.py --config ... train.engine=deepspeed
    python hybengine/train.py --config ... --dry-run          # print the resolved config and stop
    python hybengine/train.py --config ... --resume runs/x    # continue a killed run exactly
"""
from __future__ import annotations

import argparse
import sys

from hybengine.config import ConfigError, dumps, load_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML file of overrides over the typed defaults")
    p.add_argument("--resume", help="run folder or snapshot folder to continue from")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the launcher
    p.add_argument("overrides", nargs="*", help="section.key=value overrides")
    return p.parse_args(argv)


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
    from hybengine.training_loop import run_training

    run_training(cfg, resume=args.resume)
    return 0


if __name__ == "__main__":
    sys.exit(main())
