"""What every entry point does first: parse `--config`, overrides and `--dry-run`; report config errors;
and, around the run itself, turn the engine's own errors into one line and exit code 2."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from hybengine.config import Config, ConfigError, dumps, load_config

EXIT_USER_ERROR = 2  # bad config, data, checkpoint or run folder: the message says what to fix

# The engine's own errors for bad input: configs, data folders, checkpoints, run folders, budgets
# (ValueError subclasses: ConfigError, DatasetError, SweepError, ...), files that are missing or cannot
# be written (OSError: FileNotFoundError, the snapshot's "no space left"), a run stopped by NaNs.
# Anything else is a bug and keeps its traceback.
def _engine_errors() -> tuple[type[BaseException], ...]:
    from hybengine.training_loop import NonFiniteLossError

    return ValueError, OSError, NonFiniteLossError


def add_debug(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")


def parse_args(description: str | None, argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML file of overrides over the typed defaults")
    p.add_argument("--resume", help="run folder or snapshot folder to continue from")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    add_debug(p)
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the launcher
    p.add_argument("overrides", nargs="*", help="section.key=value overrides (before or after the options)")
    return p.parse_intermixed_args(argv)  # overrides may come before, between or after the options


def resolve(args: argparse.Namespace) -> Config | int:
    """The validated config, or an exit code: 2 on a config error (message on stderr), 0 after --dry-run."""
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        if getattr(args, "debug", False):
            raise
        print(f"config error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    if args.dry_run:
        print(dumps(cfg), end="")
        return 0
    return cfg


def guarded(what: str, debug: bool, run: Callable[[], int | None]) -> int:
    """run() -> its exit code (0 for None); an engine error -> `<what> error: <message>` on stderr, 2.
    With debug the error propagates with its traceback."""
    try:
        code = run()
    except _engine_errors() as e:
        if debug:
            raise
        print(f"{what} error: {e}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    return 0 if code is None else code
