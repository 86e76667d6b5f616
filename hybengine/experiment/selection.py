"""Objective settings chosen per pretraining mode on SOURCE validation data, before an experiment's
pretrainings run: the `select` section of an experiment YAML (hybengine/experiment/pipeline.py).

    select:
      seed: 100          # pretraining seed of the candidates (keep it out of pretrain.seeds)
      split: val         # source split scored: its images are never trained on, no target data is read
      grid:              # per mode, every combination of these overrides is one candidate
        hybrid: {objective.clean_share: [0.25, 0.5], objective.w_mask: [0.2, 1.0]}

Each candidate is pretrained like the experiment's own runs (same config and overrides, seed
`select.seed`) in `<out_dir>/pretrain_select_<mode>_<k>/`, then its EMA mask head is scored at sigma_clean
(where fine-tuning and prediction run) by mean foreground Dice on the source split. The highest
score wins (ties: the first candidate in grid order); the winner's overrides are added to every
pretraining of that mode. Scores and winners go to `<out_dir>/select.json` and `select.md`.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import torch

from ..config import ConfigError
from ..finetune.runner import evaluate
from ..inference import load_model
from ..runtime.atomic import atomic_write_text

DEFAULTS = {"seed": 100, "split": "val"}  # the candidates' pretraining seed, the source split scored
SELECT_KEYS = {*DEFAULTS, "grid"}
RESULT_FILES = ("select.md", "select.json", "source_scores.md")


def check_select(select: dict, modes: list[str], seeds: list, where: str) -> dict:
    """The `select` section with its defaults filled in; a malformed one is rejected by name (before
    anything runs)."""
    unknown = set(select) - SELECT_KEYS
    if unknown or "grid" not in select:
        raise ConfigError(f"{where}: section 'select' takes {sorted(SELECT_KEYS)} (grid required), "
                          f"got {sorted(select)}")
    select = {**DEFAULTS, **select}
    if select["seed"] in (seeds or []):
        raise ConfigError(f"{where}: select.seed={select['seed']} is one of pretrain.seeds; candidates must use "
                          "a seed of their own so that the chosen setting is not scored on the runs it is used in")
    for mode, grid in select["grid"].items():
        if mode not in modes:
            raise ConfigError(f"{where}: select.grid.{mode}: not one of pretrain.modes {modes}")
        if not isinstance(grid, dict) or not grid or not all(isinstance(v, list) and v for v in grid.values()):
            raise ConfigError(f"{where}: select.grid.{mode} must map config keys to non-empty lists of values")
    return select


def candidates(grid: dict[str, list]) -> list[list[str]]:
    """Every combination of the grid as `key=value` overrides, in grid order (last key fastest)."""
    keys = list(grid)
    combos = itertools.product(*(grid[k] for k in keys))
    return [[f"{k}={v}" for k, v in zip(keys, values, strict=True)] for values in combos]


def plan(select: dict) -> list[tuple[str, str, list[str]]]:
    """(candidate name, mode, overrides) of every candidate pretraining."""
    return [(f"select_{mode}_{k}", mode, over)
            for mode, grid in select["grid"].items() for k, over in enumerate(candidates(grid))]


def source_dice(folder: Path, split: str) -> tuple[float, list[float]]:
    """(mean foreground Dice, Dice per class) of a pretraining's EMA mask head at sigma_clean on a source
    split (cached in the run folder as source_<split>.json)."""
    cache = folder / f"source_{split}.json"
    if cache.is_file():
        done = json.loads(cache.read_text())
        return done["mean_foreground_dice"], done["dice"]
    net, cfg = load_model(str(folder), device=torch.device("cpu"))
    dice = evaluate(net, cfg, split)["dice"]
    score = float(sum(dice[1:]) / max(len(dice) - 1, 1))
    atomic_write_text(cache, json.dumps({"split": split, "dice": dice, "mean_foreground_dice": score}, indent=1))
    return score, dice


def choose(select: dict, out: Path) -> dict[str, list[str]]:
    """{mode: winning overrides} from the finished candidates under `out`; writes select.json and select.md."""
    split = select["split"]
    rows, winners = [], {}
    for name, mode, over in plan(select):
        score, _ = source_dice(out / f"pretrain_{name}", split)
        rows.append({"candidate": name, "mode": mode, "overrides": over, "score": score})
        if mode not in winners or score > winners[mode][1]:
            winners[mode] = (over, score)
    chosen = {mode: over for mode, (over, _) in winners.items()}
    atomic_write_text(out / "select.json", json.dumps({"split": split, "seed": select["seed"],
                                                       "candidates": rows, "chosen": chosen}, indent=1))
    lines = [f"# Objective settings chosen on the source `{split}` split", "",
             f"Candidates pretrained with seed {select['seed']}; score: mean foreground Dice of the "
             "EMA mask head at sigma_clean on the source split (no target data). Chosen: **bold**.", "",
             "| mode | overrides | source Dice |", "|---|---|---:|"]
    for r in rows:
        best = chosen[r["mode"]] == r["overrides"]
        over = " ".join(r["overrides"])
        lines.append(f"| {r['mode']} | {'**' + over + '**' if best else over} | {r['score']:.4f} |")
    atomic_write_text(out / "select.md", "\n".join(lines) + "\n")
    return chosen


def score_starts(folders: dict[str, Path], split: str, out: Path) -> None:
    """The diagnostic behind a fine-tune result: each pretrained start's mask head at sigma_clean on the
    source split (where fine-tuning starts from), in <out>/source_scores.md."""
    lines = [f"# Each pretrained start's mask head on the source `{split}` split", "",
             "Mean foreground Dice (and per class) of the EMA mask head at sigma_clean; no target data.", "",
             "| start | mean foreground Dice | per class |", "|---|---:|---|"]
    for name, folder in folders.items():
        score, dice = source_dice(folder, split)
        lines.append(f"| {name} | {score:.4f} | {' / '.join(f'{d:.4f}' for d in dice)} |")
    atomic_write_text(out / "source_scores.md", "\n".join(lines) + "\n")
