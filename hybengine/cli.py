"""What every entry point does first: parse `--config`, overrides, `--resume` and `--dry-run`; report
config errors; and, around the run itself, turn the engine's own errors into one line and exit code 2
(Ctrl-C: one line and exit code 130).

`--resume RUN` alone continues a run with the config it saved (hybengine/runtime/run_folder.py
`saved_run_config`); `--config` and overrides given with it apply over that saved config, and the
training loop refuses any change to a key that is not resume-free (hybengine/config.py marks them)."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable

from hybengine.config import Config, ConfigError, config_from_dict, dumps, load_config

EXIT_USER_ERROR = 2  # bad config, data, checkpoint or run folder: the message says what to fix
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it

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
    p.add_argument("--config", help="YAML file of overrides over the typed defaults (with --resume: over the "
                   "run's saved config)")
    p.add_argument("--resume", help="run folder or snapshot folder to continue from, with the config it saved "
                   "(overrides given with it may change only resume-free keys, e.g. train.steps)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    add_debug(p)
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the launcher
    p.add_argument("overrides", nargs="*", help="section.key=value overrides (before or after the options)")
    return p.parse_intermixed_args(argv)  # overrides may come before, between or after the options


def resume_base(resume: str, user_config: Callable[[Config], Config] | None = None) -> Config:
    """The config `--resume RUN` starts from: the run's saved one, its run folder as train.out_dir (or
    sweep.out_dir for a sweep). `user_config` turns a saved run config back into the command's (a
    fine-tune saves the config it trained, with train.steps grown by the budget)."""
    from hybengine.runtime.run_folder import run_folder_of, saved_run_config

    base = config_from_dict(saved_run_config(resume))
    folder = run_folder_of(resume)
    if folder is not None and (folder / "sweep.yaml").is_file() and not (folder / "checkpoints").exists():
        return dataclasses.replace(base, sweep=dataclasses.replace(base.sweep, out_dir=str(folder)))
    if folder is not None:
        base = dataclasses.replace(base, train=dataclasses.replace(base.train, out_dir=str(folder)))
    return user_config(base) if user_config is not None else base


def resolve(args: argparse.Namespace, what: str = "train",
            user_config: Callable[[Config], Config] | None = None) -> Config | int:
    """The validated config, or an exit code: 2 on a config error (message on stderr), 0 after --dry-run.
    With --resume, the run's saved config is the base (see `resume_base`)."""
    from hybengine.runtime.run_folder import RunFolderError, check_folder_path

    debug = getattr(args, "debug", False)
    try:
        base = resume_base(args.resume, user_config) if getattr(args, "resume", None) else None
    except ConfigError as e:  # a saved config this version cannot read
        if debug:
            raise
        print(f"{what} error: --resume {args.resume}: its saved config: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except _engine_errors() as e:  # no run there, an unreadable or crafted snapshot
        if debug:
            raise
        print(f"{what} error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    try:
        cfg = load_config(args.config, args.overrides, base=base)
        check_folder_path("train.out_dir", cfg.train.out_dir)
        if cfg.sweep.budgets:
            check_folder_path("sweep.out_dir", cfg.sweep.out_dir)
    except (ConfigError, RunFolderError) as e:
        if debug:
            raise
        print(f"config error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    if args.dry_run:
        print(dumps(cfg), end="")
        return 0
    return cfg


def guarded(what: str, debug: bool, run: Callable[[], int | None]) -> int:
    """run() -> its exit code (0 for None); an engine error -> `<what> error: <message>` on stderr, 2;
    Ctrl-C -> `<what> interrupted: ...` on stderr, 130. With debug the error propagates with its traceback."""
    try:
        code = run()
    except _engine_errors() as e:
        if debug:
            raise
        print(f"{what} error: {e}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as e:
        if debug:
            raise
        detail = str(e) or "stopped by Ctrl-C; every complete snapshot and result is intact: run the same " \
                            "command again (with --resume RUN for a train or finetune run) to continue"
        print(f"{what} interrupted: {detail}", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    return 0 if code is None else code
