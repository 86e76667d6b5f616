"""An experiment: pretrain one model per objective mode on the source domain, then sweep fine-tunes of
each (and scratch) on the target domain, then copy the small result files to a results folder.

    python -m hybengine.experiment --config configs/experiments/scratch_assay.yaml

The experiment YAML names the pretraining config, its modes, seeds and overrides, the sweep config and
its overrides, `out_dir` (pretrain_<mode>[_p<seed>]/ and sweep/ go there) and `results_dir`. Optional:
`simulate` (a simulated domain pair written first, hybengine/data/simulated.py) and `analysis` (the
endpoint, the contrasts and the family of tests Holm-corrected, fixed before the experiment runs;
hybengine/experiment/stats.py), which adds contrasts.{md,csv,png} to the results. With more than one
pretraining seed each pretrained start is named `<mode>_p<seed>` (train.seed = the seed).
`pretrain.variants` ({name: {mode, overrides}}) adds pretrainings of a mode with overrides of their own
(e.g. the target's images as unlabeled data); `finetune.variants` ({name: {start, overrides, step}})
fine-tunes a start's checkpoints again with overrides of their own (e.g. `finetune.unlabeled_share`), or
its snapshot at an earlier `step` (e.g. a supervised start matched to hybrid's source score). Optional
`select`: objective settings chosen per mode on source validation data by candidate pretrainings run
first (hybengine/experiment/selection.py). Both stages resume: a pretraining whose final snapshot exists
is not redone (a partial one continues from its last snapshot), and the sweep skips finished
fine-tunes (hybengine/finetune/sweep.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

import torch
import yaml

from ..config import ConfigError, load_config
from ..data import DatasetError, validate_folder
from ..data.simulated import spec_from_dict, write_pair
from ..finetune.reports import write_contrasts, write_reports
from ..finetune.sweep import SweepError, run_sweep
from ..runtime.atomic import atomic_write_text
from ..runtime.checkpoint import find_snapshot, load_weights
from ..runtime.distributed import device_name, pick_device
from ..training_loop import run_training
from . import selection
from .stats import contrast_table, score_of, split_init, versus_zero_shot

KEYS = {"pretrain": {"config", "modes", "seeds", "overrides", "variants"},
        "finetune": {"config", "overrides", "variants"},
        "out_dir": None, "results_dir": None}
OPTIONAL = {"simulate", "analysis", "select"}
ANALYSIS_KEYS = {"metric", "classes", "class_names", "contrasts", "family", "n_boot"}
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
    unknown = set(spec) - set(KEYS) - OPTIONAL
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)}; allowed: {sorted(set(KEYS) | OPTIONAL)}")
    analysis = spec.get("analysis")
    if analysis is not None:
        unknown = set(analysis) - ANALYSIS_KEYS
        if unknown or "contrasts" not in analysis:
            raise ConfigError(f"{path}: section 'analysis' takes {sorted(ANALYSIS_KEYS)} (contrasts required), "
                              f"got {sorted(analysis)}")
        for pair in [*analysis["contrasts"], *analysis.get("family", {}).get("contrasts", [])]:
            if not (isinstance(pair, list) and len(pair) == 2):
                raise ConfigError(f"{path}: analysis contrast {pair!r} must be a pair [a, b] of start names")
    kinds = pretrain_kinds(spec)
    for name, v in spec["finetune"].get("variants", {}).items():
        if not isinstance(v, dict) or set(v) - {"start", "overrides", "step"} or v.get("start") not in kinds:
            raise ConfigError(f"{path}: finetune.variants.{name} takes start (one of {kinds}), overrides "
                              f"and step (a snapshot step of the start), got {v!r}")
    if "select" in spec:
        pre = spec["pretrain"]
        spec["select"] = selection.check_select(spec["select"], pre.get("modes", ["hybrid"]), pre.get("seeds"),
                                                str(path))
    return spec


def pretrain_plan(spec: dict) -> list[tuple[str, str, int | None]]:
    """(start name, mode or variant, seed or None) of every pretraining, seeds outermost: the modes, then
    `pretrain.variants` ({name: {mode, overrides}}: a mode with overrides of its own, e.g. unlabeled images)."""
    return [(kind if seed is None else f"{kind}_p{seed}", kind, seed)
            for seed in spec["pretrain"].get("seeds") or [None] for kind in pretrain_kinds(spec)]


def pretrain_kinds(spec: dict) -> list[str]:
    """The pretraining kinds: the modes, then the `pretrain.variants` names."""
    return [*spec["pretrain"].get("modes", ["hybrid"]), *spec["pretrain"].get("variants", {})]


def kind_overrides(spec: dict, kind: str) -> list[str]:
    """objective.mode and the overrides of one pretraining kind (a mode or a pretrain.variants entry)."""
    variant = spec["pretrain"].get("variants", {}).get(kind)
    if variant is None:
        return [f"objective.mode={kind}"]
    return [f"objective.mode={variant['mode']}", *variant.get("overrides", [])]


def finetune_variants(spec: dict, folders: dict[str, Path]) -> list[tuple[list[str], list[str]]]:
    """(inits, overrides) of each `finetune.variants` entry ({name: {start, overrides, step}}): the start's
    checkpoints (every seed; with `step`, its snapshot at that step) fine-tuned with overrides of the
    variant's own, named <name>[_p<seed>]."""
    return [([f"{n}={f}" for n, f in variant_starts(spec, folders, name).items()], v.get("overrides", []))
            for name, v in spec["finetune"].get("variants", {}).items()]


def variant_starts(spec: dict, folders: dict[str, Path], name: str) -> dict[str, Path]:
    """{<name>[_p<seed>]: the folder a finetune.variants entry starts from} (a snapshot folder with `step`)."""
    v = spec["finetune"]["variants"][name]
    return {f"{name}{start[len(v['start']):]}": folder / "checkpoints" / f"step_{int(v['step']):08d}"
            if "step" in v else folder
            for start, folder in folders.items() if start == v["start"] or start.startswith(f"{v['start']}_p")}


def start_names(spec: dict) -> list[str]:
    """Every start the sweeps fine-tune: the pretrainings, the fine-tune variants, then scratch."""
    plan = pretrain_plan(spec)
    names = [name for name, _, _ in plan]
    for vname, v in spec["finetune"].get("variants", {}).items():
        names += [f"{vname}{name[len(v['start']):]}" for name, kind, _ in plan if kind == v["start"]]
    return [*names, "scratch"]


def pretrain(spec: dict, out: Path, shard: tuple[int, int] = (0, 1)) -> dict[str, Path]:
    """This shard's pretrainings (every n-th of the plan), after the `select` candidates when the spec has
    them (their winners' overrides added to their mode's runs); returns {name: run folder} of all runs."""
    chosen = {}
    if "select" in spec:
        seed = spec["select"]["seed"]
        run_all([(name, [*over, f"train.seed={seed}", f"objective.mode={mode}"])
                 for name, mode, over in selection.plan(spec["select"])], spec, out, shard)
        chosen = selection.choose(spec["select"], out)
        print(f"chosen on the source {spec['select']['split']} split: {chosen}", flush=True)
    jobs = [(name, [*chosen.get(kind, []), *([] if seed is None else [f"train.seed={seed}"]),
                    *kind_overrides(spec, kind)]) for name, kind, seed in pretrain_plan(spec)]
    folders = run_all(jobs, spec, out, shard)
    if shard[0] == 0:
        score_sources(spec, folders, out)
    return folders


def source_split(spec: dict) -> str | None:
    """The source split each start is scored on: the one the selection used, else the source's val split,
    else its test split (held-out source data the experiment uses nowhere else); None when it has neither."""
    source = Path(load_config(spec["pretrain"]["config"], spec["pretrain"].get("overrides", [])).data.root)
    splits = [spec["select"]["split"]] if "select" in spec else ["val", "test"]
    return next((s for s in splits if (source / s).is_dir()), None)


def score_sources(spec: dict, folders: dict[str, Path], out: Path) -> None:
    """Each start's source score, in every report (selection.score_starts), on `source_split`: the
    pretrainings' and the snapshots that finetune.variants start from (`step`)."""
    split = source_split(spec)
    snapshots = {n: f for name, v in spec["finetune"].get("variants", {}).items() if "step" in v
                 for n, f in variant_starts(spec, folders, name).items()}
    if split is not None:
        selection.score_starts({**folders, **snapshots}, split, out)


def run_all(jobs: list[tuple[str, list[str]]], spec: dict, out: Path, shard: tuple[int, int]) -> dict[str, Path]:
    """Runs (or resumes, or skips when finished) this shard's share of the (name, overrides) pretrainings,
    each in <out>/pretrain_<name>, then waits until every other
    shard's are finished; returns {name: run folder} of all of them."""
    pre = spec["pretrain"]
    folders = {}
    for i, (name, extra) in enumerate(jobs):
        folder = folders[name] = out / f"pretrain_{name}"
        if i % shard[1] != shard[0]:
            continue
        cfg = load_config(pre["config"], [*pre.get("overrides", []), *extra, f"train.out_dir={folder}"])
        resume = None
        if _finished(folder, cfg.train.steps):
            print(f"pretrain {name}: finished earlier ({folder})", flush=True)
            continue
        try:
            resume = str(find_snapshot(folder))
        except FileNotFoundError:
            pass
        t0 = time.perf_counter()
        run_training(cfg, resume=resume)
        print(f"pretrain {name}: {cfg.train.steps} steps in {time.perf_counter() - t0:.0f} s", flush=True)
    if shard[1] > 1:
        steps = load_config(pre["config"], pre.get("overrides", [])).train.steps
        while not all(_finished(folder, steps) for folder in folders.values()):
            time.sleep(10)  # another shard is still pretraining
    return folders


def _finished(folder: Path, steps: int) -> bool:
    try:
        return load_weights(find_snapshot(folder))["step"] >= steps
    except FileNotFoundError:
        return False


def analyse(spec: dict, records: list[dict], results: Path, title: str) -> list[dict]:
    """The contrasts of spec['analysis'] over the sweep's records -> contrasts.{md,csv,png} in results."""
    a = spec["analysis"]
    metric = a.get("metric", "dice")
    names = a.get("class_names", [])
    scores = {f"mean foreground {metric}": score_of(metric)}
    for k in a.get("classes", []):
        scores[f"{names[k] if k < len(names) else f'class {k}'} {metric}"] = score_of(metric, k)
    contrasts = [tuple(c) for c in a["contrasts"]]
    budgets = sorted({r["budget"] for r in records})
    fam = a.get("family", {})
    fam_pairs = {tuple(c) for c in fam.get("contrasts", a["contrasts"])}
    fam_budgets = set(fam.get("budgets", budgets))
    primary = next(iter(scores))
    rows = contrast_table(records, contrasts, budgets, scores, n_boot=int(a.get("n_boot", 10000)),
                          family=lambda r: r["score"] == primary and (r["a"], r["b"]) in fam_pairs
                          and r["budget"] in fam_budgets)
    note = (f"Paired differences A − B over seeds (hybengine/experiment/stats.py): mean over the (pretraining "
            f"seed, label seed) grid; in brackets the 95 % hierarchical bootstrap interval (pretraining seeds "
            f"drawn with replacement, then label seeds within each: the unit of a claim about a pretraining "
            f"method), and how many pretraining seeds have a mean difference > 0; then the 95 % interval over "
            f"label seeds alone (conditional on these checkpoints) and the exact Wilcoxon signed-rank p over "
            f"label seeds; Holm over the declared family ({primary}: {sorted(fam_pairs)} at budgets "
            f"{sorted(fam_budgets)}). Bold: the hierarchical interval excludes 0.")
    write_contrasts(rows, results, title, note)
    if 0 in budgets:
        write_zero_shot(records, results, scores[primary], int(a.get("n_boot", 10000)), primary)
    return rows


def write_zero_shot(records: list[dict], results: Path, score, n_boot: int, label: str) -> None:
    """zero_shot.md: each pretrained start's fine-tune minus its own zero-shot score, per budget."""
    starts = list(dict.fromkeys(split_init(r["init"])[0] for r in records if r["budget"] == 0))
    budgets = sorted({r["budget"] for r in records} - {0})
    lines = [f"# Fine-tuned minus zero-shot ({label})", "",
             "Each pretrained start's fine-tune at a budget minus the same checkpoint's zero-shot score (budget 0: "
             "its mask head as it is, at the prediction sigma); mean over the (pretraining seed, label seed) grid, "
             "95 % hierarchical bootstrap interval, pretraining seeds whose mean difference is > 0. Negative: the "
             "fine-tune ends below where it started. Bold: interval excludes 0.", "",
             "| start | zero-shot | " + " | ".join(f"{b} label{'s' if b > 1 else ''}" for b in budgets) + " |",
             "|---|---:|" + "---:|" * len(budgets)]
    for start in starts:
        cells = []
        for b in budgets:
            r = versus_zero_shot(records, start, b, score, n_boot=n_boot)
            mark = "**" if r["hier_low"] > 0 or r["hier_high"] < 0 else ""
            cells.append(f"{mark}{r['mean']:+.3f} [{r['hier_low']:+.3f}, {r['hier_high']:+.3f}]{mark} "
                         f"{r['seeds_up']}/{r['seeds_nonzero']}")
        zs = versus_zero_shot(records, start, budgets[0], score, n_boot=10)["zero_shot"] if budgets else math.nan
        lines.append(f"| {start} | {zs:.3f} | " + " | ".join(cells) + " |")
    atomic_write_text(results / "zero_shot.md", "\n".join(lines) + "\n")


def sweep_records(out: Path, starts) -> list[dict]:
    """The finished fine-tunes' result.json records of this experiment's starts (and scratch)."""
    names = {*starts, "scratch"}
    records = [json.loads(f.read_text()) for f in sorted((out / "sweep" / "runs").glob("*/result.json"))]
    return [r for r in records if r["init"] in names]


def analyse_only(path: str) -> int:
    """Reports over the finished fine-tunes only (an interrupted experiment): table + contrasts."""
    spec = load_experiment(path)
    out, results = Path(spec["out_dir"]), Path(spec["results_dir"])
    starts = start_names(spec)
    records = sweep_records(out, starts)
    if not records:
        print(f"experiment error: no finished fine-tune under {out / 'sweep' / 'runs'}", file=sys.stderr)
        return 2
    cfg = load_config(spec["finetune"]["config"], spec["finetune"].get("overrides", []))
    if not (out / "source_scores.md").is_file():  # an experiment run before sources were scored on test
        try:
            score_sources(spec, {name: out / f"pretrain_{name}" for name, _, _ in pretrain_plan(spec)}, out)
        except FileNotFoundError as e:  # e.g. the sweep copied without its pretrainings: report the rest
            print(f"experiment: no source_scores.md ({e})", file=sys.stderr)
    copy_results(out, results)  # the selection's files (the sweep's reports are rewritten below)
    write_reports(records, results, title=f"{spec['out_dir']} (finished fine-tunes: {len(records)})",
                  class_names=cfg.sweep.class_names, inits=starts)
    if "analysis" in spec:
        analyse(spec, records, results, f"{spec['out_dir']}: paired differences in fine-tuned Dice "
                                        f"({len(records)} finished fine-tunes)")
    return 0


def copy_results(out: Path, results: Path) -> None:
    """The sweep's small report files and the selection's (when there was one) into the results folder."""
    results.mkdir(parents=True, exist_ok=True)
    for src in [*(out / "sweep" / n for n in RESULT_FILES), *(out / n for n in selection.RESULT_FILES)]:
        if src.is_file():
            shutil.copyfile(src, results / src.name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="experiment YAML (configs/experiments/)")
    p.add_argument("--resume", help="an experiment's out_dir: continue it with the experiment.yaml saved there")
    p.add_argument("--shard", default="0/1", help="i/n: run every n-th pretraining and label seed from the "
                   "i-th (start n processes, then --analyse-only once all have finished)")
    p.add_argument("--analyse-only", action="store_true",
                   help="train nothing: write the reports and contrasts of the fine-tunes finished so far")
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    if args.resume:  # the spec saved at the first start (same command, so same pretrainings and sweep)
        args.config = str(Path(args.resume) / "experiment.yaml")
        if not Path(args.config).is_file():
            print(f"experiment error: --resume {args.resume}: no experiment.yaml there; name the out_dir of an "
                  "experiment started with --config", file=sys.stderr)
            return 2
    elif not args.config:
        p.error("--config (or --resume <out_dir>) is required")
    if args.analyse_only:
        return analyse_only(args.config)
    try:
        spec = load_experiment(args.config)
        out = Path(spec["out_dir"])
        if "simulate" in spec:
            write_pair(spec_from_dict(spec["simulate"]))
        ft = spec["finetune"]
        # a config error or an unusable target split stops us before any pretraining
        ft_cfg = load_config(ft["config"], ft.get("overrides", []))
        for split in (ft_cfg.data.train_split, ft_cfg.data.test_split):
            validate_folder(ft_cfg.data.root, split, dataclasses.replace(ft_cfg.data, labeled_subset=[]))
        out.mkdir(parents=True, exist_ok=True)
        if Path(args.config).resolve() != (out / "experiment.yaml").resolve():
            atomic_write_text(out / "experiment.yaml", Path(args.config).read_text())  # for --resume
        shard = tuple(int(v) for v in args.shard.split("/"))
        if len(shard) != 2 or not 0 <= shard[0] < shard[1]:
            raise ConfigError(f"--shard {args.shard}: expected i/n with 0 <= i < n")
        t0 = time.perf_counter()
        folders = pretrain(spec, out, shard)
        t_pre = time.perf_counter() - t0
        inits = [f"{name}={folder}" for name, folder in folders.items()] + ["scratch"]
        cfg = load_config(ft["config"], [*ft.get("overrides", []), f"sweep.inits=[{','.join(inits)}]",
                                         f"sweep.out_dir={out / 'sweep'}"])
        t0 = time.perf_counter()
        # one label seed at a time, so that an interrupted experiment leaves whole seeds (every start
        # and budget) behind, which the paired analysis can use (--analyse-only)
        variants = [load_config(ft["config"], [*ft.get("overrides", []), *over, f"sweep.inits=[{','.join(v_inits)}]",
                                               f"sweep.out_dir={out / 'sweep'}"])
                    for v_inits, over in finetune_variants(spec, folders)]
        for i, seed in enumerate(cfg.sweep.seeds[shard[0]::shard[1]]):
            for c in [cfg, *variants]:
                run_sweep(dataclasses.replace(c, sweep=dataclasses.replace(c.sweep, seeds=[seed])),
                          console_logging=i == 0 and c is cfg)
        t_sweep = time.perf_counter() - t0
    except (ConfigError, SweepError, DatasetError) as e:
        print(f"experiment error: {e}", file=sys.stderr)
        return 2
    if shard[1] > 1:
        print(f"shard {args.shard} finished; when every shard has, run --analyse-only", flush=True)
        return 0
    results = Path(spec["results_dir"])
    results.mkdir(parents=True, exist_ok=True)
    copy_results(out, results)
    records = sweep_records(out, start_names(spec))
    if "variants" in ft:  # the sweeps' own tables hold one config each: rewrite them over every start
        write_reports(records, results, title=f"{spec['out_dir']}: mean foreground Dice after fine-tuning",
                      class_names=cfg.sweep.class_names, inits=start_names(spec))
    if "analysis" in spec:
        analyse(spec, records, results, f"{spec['out_dir']}: paired differences in fine-tuned Dice")
    command = "python -m hybengine.experiment " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
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
