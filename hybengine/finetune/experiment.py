"""An experiment: pretrain one model per objective mode on the source domain, then sweep fine-tunes of
each (and scratch) on the target domain, then copy the small result files to a results folder.

    python -m hybengine.finetune.experiment --config configs/experiments/scratch_assay.yaml

The experiment YAML names the pretraining config, its modes and overrides, the sweep config and its
overrides, `out_dir` (pretrain_<mode>/ and sweep/ go there) and `results_dir`. Both stages resume: a
pretraining whose final snapshot exists is not redone (a partial one continues from its last
snapshot), and the sweep skips finished fine-tunes (hybengine/finetune/sweep.py).
"""
from __future__ import annotations

import argparse
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

import torch
import yaml

from ..config import ConfigError, load_config
from ..runtime.atomic import atomic_write_text
from ..runtime.checkpoint import find_snapshot, load_weights
from ..runtime.distributed import device_name, pick_device
from ..training_loop import run_training
from .sweep import SweepError, run_sweep

KEYS = {"pretrain": {"config", "modes", "overrides"}, "finetune": {"config", "overrides"},
        "out_dir": None, "results_dir": None}
RESULT_FILES = ("table.md", "table.csv", "runs.csv", "per_image.csv", "plot.png", "runner.json")


def load_experiment(path: str | Path) -> dict:
    """The experiment YAML, with unknown or missing keys rejected by name."""
    spec = yaml.safe_load(Path(path).read_text()) or {}
    for key, sub in KEYS.items():
        if key not in spec:
            raise ConfigError(f"{path}: missing key '{key}'")
        if sub is not None:
            unknown = set(spec[key]) - sub
            if unknown or not {"config"} <= set(spec[key]):
                raise ConfigError(f"{path}: section '{key}' takes {sorted(sub)} (config required), got "
                                  f"{sorted(spec[key])}")
    unknown = set(spec) - set(KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)}; allowed: {sorted(KEYS)}")
    return spec


def pretrain(spec: dict, out: Path) -> dict[str, Path]:
    """Runs (or resumes, or skips when finished) each pretraining mode; returns {mode: run folder}."""
    pre = spec["pretrain"]
    folders = {}
    for mode in pre.get("modes", ["hybrid"]):
        folder = out / f"pretrain_{mode}"
        cfg = load_config(pre["config"], [*pre.get("overrides", []), f"objective.mode={mode}",
                                          f"train.out_dir={folder}"])
        resume = None
        try:
            snap = find_snapshot(folder)
            if load_weights(snap)["step"] >= cfg.train.steps:
                print(f"pretrain {mode}: finished earlier ({snap})", flush=True)
                folders[mode] = folder
                continue
            resume = str(snap)
        except FileNotFoundError:
            pass
        t0 = time.perf_counter()
        run_training(cfg, resume=resume)
        print(f"pretrain {mode}: {cfg.train.steps} steps in {time.perf_counter() - t0:.0f} s", flush=True)
        folders[mode] = folder
    return folders


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="experiment YAML (configs/experiments/)")
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    try:
        spec = load_experiment(args.config)
        out = Path(spec["out_dir"])
        ft = spec["finetune"]
        load_config(ft["config"], ft.get("overrides", []))  # a config error stops us before pretraining
        t0 = time.perf_counter()
        folders = pretrain(spec, out)
        t_pre = time.perf_counter() - t0
        inits = [f"{mode}={folder}" for mode, folder in folders.items()] + ["scratch"]
        cfg = load_config(ft["config"], [*ft.get("overrides", []), f"sweep.inits=[{','.join(inits)}]",
                                         f"sweep.out_dir={out / 'sweep'}"])
        t0 = time.perf_counter()
        run_sweep(cfg)
        t_sweep = time.perf_counter() - t0
    except (ConfigError, SweepError) as e:
        print(f"experiment error: {e}", file=sys.stderr)
        return 2
    results = Path(spec["results_dir"])
    results.mkdir(parents=True, exist_ok=True)
    for name in RESULT_FILES:
        if (out / "sweep" / name).is_file():
            shutil.copyfile(out / "sweep" / name, results / name)
    command = "python -m hybengine.finetune.experiment " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    atomic_write_text(results / "command.md", (
        f"# How these results were made\n\n```\n{command}\n```\n\n"
        f"- machine: {device_name(pick_device(0))}, {torch.get_num_threads()} torch threads, torch "
        f"{torch.__version__}, Python {platform.python_version()}\n"
        f"- pretraining ({', '.join(folders)}): {t_pre:.0f} s (0 when finished earlier and reused)\n"
        f"- sweep: {t_sweep:.0f} s; whole command {time.perf_counter() - t_start:.0f} s\n"
        f"- resolved sweep config: {out / 'sweep' / 'sweep.yaml'} (not committed; reproduce with the command)\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
