"""What every entry point does first: parse `--config`, overrides and `--dry-run`; report config errors."""
from __future__ import annotations

import argparse
import sys

from hybengine.config import Config, ConfigError, dumps, load_config


def parse_args(description: str | None, argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML file of overrides over the typed defaults")
    p.add_argument("--resume", help="run folder or snapshot folder to continue from")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the launcher
    p.add_argument("overrides", nargs="*", help="section.key=value overrides")
    return p.parse_args(argv)


def resolve(args: argparse.Namespace) -> Config | int:
    """The validated config, or an exit code: 2 on a config error (message on stderr), 0 after --dry-run."""
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(dumps(cfg), end="")
        return 0
    return cfg
