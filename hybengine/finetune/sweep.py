"""Label-budget sweeps: every initialisation x budget x seed is one fine-tune, then the reports.

    python -m hybengine.finetune --config configs/finetune/scratch_assay_sweep.yaml [key=value ...]
(the fine-tune entry point dispatches here when `sweep.budgets` is set; `python -m hybengine.finetune.sweep` is
the same command). Layout under `sweep.out_dir`:

    runs/<init>_b<budget>_s<seed>/   config.yaml, metrics.jsonl, result.json (written last, atomically)
    runner.json                      what `sweep.runner=auto` measured and chose, per device
    per_image.csv, runs.csv, table.csv, table.md, plot.png      (hybengine/finetune/reports.py)

Before anything trains, the whole plan is checked: the target train split is scanned once (a pool with
no labeled image is an error), every budget must fit the pool, every checkpoint must load and match
data.image_channels / data.num_classes, and the test split must be readable. Label subsets come from
`labeled_subset(pool, budget, seed)`: deterministic per seed and nested across budgets.

Resuming: a run whose folder holds result.json and the same config.yaml is done and is not redone; a
folder with a result for another config is an error (use another sweep.out_dir). Run the same command
again after an interruption (or `--resume <sweep.out_dir>` alone: its sweep.yaml is the config). Every
result and report is written atomically (a kill leaves a whole file or none), a run without its
result.json is started over, and the rerun makes the same choices as the first start: the runner is
chosen for the whole plan and the batched runner's groups are cut from the whole plan, an interrupted
group (some members without a result) redone whole, so the rerun's runs.csv, per_image.csv and reports
are those of an uninterrupted sweep, bit for bit (tests/test_sweep.py).

Runner: `sequential` loops over `run_finetune`; `batched` trains groups of up to `sweep.batch_runs` runs
at once (hybengine/finetune/batched.py); `auto` times one training step of R runs both ways on this
device, with the sweep's model, batch and crop, and picks the faster (batched only if it saves at least
`AUTO_MARGIN`), logging both times; the measurement is kept in runner.json and reused when the device
and the step shape are unchanged.

Several devices: started by the DeepSpeed launcher or torchrun (`torchrun --nproc_per_node N -m
hybengine.finetune ...`, `deepspeed --num_gpus N --module hybengine.finetune ...`), rank r runs every
N-th fine-tune still to do from r on, each as a single process on its own device (LOCAL_RANK), with
the runner `sweep.runner` picks; rank 0 waits for every result.json and writes the reports. Each run is
seeded by its own config, so the results equal a one-process sweep's (tests/test_sweep_ranks.py).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from ..config import Config, SweepConfig, bookkeeping_keys, config_diff, dumps
from ..data import DatasetError, FolderDataset, validate_folder
from ..runtime.atomic import atomic_write_text
from ..runtime.checkpoint import save_final_weights
from ..runtime.distributed import device_name, pick_device
from ..runtime.run_folder import check_folder_path, clear_run_files
from ..runtime.run_log import setup_logging
from .batched import NonFiniteMembersError, check_batchable, group_key, run_batched, time_steps
from .reports import aggregate, write_reports
from .runner import evaluate, prepare_finetune, pretrained_init, run_finetune, write_result

log = logging.getLogger("hybengine.finetune.sweep")

# Keys that change how a run is watched, not what it trains: a finished run stays finished across them.
BOOKKEEPING = bookkeeping_keys()
AUTO_MARGIN = 0.8  # batched is chosen only when it takes < 80 % of the sequential time (timing noise)
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class SweepError(ValueError):
    """A sweep that cannot run as configured; raised before anything trains."""


@dataclass
class PlannedRun:
    init: str  # initialisation name (hybrid, supervised, denoise, scratch, ...)
    checkpoint: str  # "" = scratch
    budget: int
    seed: int
    out_dir: Path

    @property
    def name(self) -> str:
        return f"{self.init}_b{self.budget}_s{self.seed}"


def parse_inits(inits: list[str]) -> list[tuple[str, str]]:
    """["hybrid=runs/x", "scratch"] -> [("hybrid", "runs/x"), ("scratch", "")]."""
    out = []
    for item in inits:
        name, _, path = item.partition("=")
        name, path = name.strip(), path.strip()
        if not _NAME.match(name):
            raise SweepError(f"sweep.inits entry {item!r}: the name before '=' must be letters, digits, '_', "
                             "'-' or '.' (it names run folders)")
        if name == "scratch" and path:
            raise SweepError(f"sweep.inits entry {item!r}: 'scratch' takes no checkpoint")
        out.append((name, path))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise SweepError(f"sweep.inits names repeat: {names}; each initialisation needs its own name")
    return out


def run_config(cfg: Config, run: PlannedRun) -> Config:
    """The single fine-tune config of one planned run (the sweep section reset: it is not the run's)."""
    return dataclasses.replace(
        cfg, sweep=SweepConfig(),
        finetune=dataclasses.replace(cfg.finetune, checkpoint=run.checkpoint, budget=run.budget, seed=run.seed),
        train=dataclasses.replace(cfg.train, out_dir=str(run.out_dir), progress=False))


def plan_sweep(cfg: Config) -> tuple[list[PlannedRun], list[str]]:
    """Every run of the sweep, checked up front (see module docstring); returns (runs, train pool)."""
    s = cfg.sweep
    if not s.budgets:
        raise SweepError("sweep.budgets is empty: list the label budgets to sweep, e.g. sweep.budgets=[1,2,5]")
    if not s.seeds:
        raise SweepError("sweep.seeds is empty: list at least one seed, e.g. sweep.seeds=[0,1,2]")
    if not s.inits:
        raise SweepError("sweep.inits is empty: list initialisations as name=checkpoint_folder, or scratch")
    if len(set(s.budgets)) != len(s.budgets) or len(set(s.seeds)) != len(s.seeds):
        raise SweepError(f"sweep.budgets={s.budgets} and sweep.seeds={s.seeds} must not repeat values")
    if min(s.budgets) < 0:
        raise SweepError(f"sweep.budgets={s.budgets}: every budget must be >= 0 labeled images (0: zero-shot)")
    if s.batch_runs < 1:
        raise SweepError(f"sweep.batch_runs={s.batch_runs}: must be >= 1")
    inits = parse_inits(s.inits)

    plain_data = dataclasses.replace(cfg.data, labeled_subset=[])
    try:
        pool = validate_folder(cfg.data.root, cfg.data.train_split, plain_data)
    except DatasetError as e:
        raise SweepError(f"the target pool {Path(cfg.data.root) / cfg.data.train_split} is unusable, so no "
                         f"label budget can be drawn from it:\n{e}") from e
    if not pool:
        raise SweepError(f"the target pool {Path(cfg.data.root) / cfg.data.train_split} holds no labeled image")
    too_big = [b for b in s.budgets if b > len(pool)]
    if too_big:
        raise SweepError(f"sweep.budgets {too_big} exceed the {len(pool)} labeled images of "
                         f"{Path(cfg.data.root) / cfg.data.train_split}; choose budgets in 1..{len(pool)}")
    validate_folder(cfg.data.root, cfg.data.test_split, plain_data)
    for name, ckpt in inits:
        if ckpt:
            try:
                pretrained_init(dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, checkpoint=ckpt)))
            except (FileNotFoundError, ValueError) as e:
                raise SweepError(f"sweep.inits '{name}={ckpt}': {e}") from e

    root = Path(s.out_dir) / "runs"
    runs = [PlannedRun(name, ckpt, b, seed, root / f"{name}_b{b}_s{seed}")
            for name, ckpt in inits for b in s.budgets for seed in s.seeds
            if b or ckpt]  # budget 0 (zero-shot) of a pretrained start only
    return runs, pool


def is_done(cfg: Config, run: PlannedRun, pool: list[str]) -> bool:
    """result.json present: done, if its config.yaml is this run's; a foreign result is an error."""
    result = run.out_dir / "result.json"
    if not result.is_file():
        return False
    saved = run.out_dir / "config.yaml"
    run_cfg, _ = prepare_finetune(run_config(cfg, run), pool)
    then = yaml.safe_load(saved.read_text()) if saved.is_file() else {}
    changed = config_diff(run_cfg, then, BOOKKEEPING)
    if changed:
        raise SweepError(f"{run.out_dir} holds a result for a different config ({', '.join(changed[:6])} differ); "
                         "delete that folder, or point sweep.out_dir somewhere new")
    return True


# ---------------------------------------------------------------------------------------------
# Runner choice


def choose_runner(runner: str, run_cfg: Config, R: int, device: torch.device,
                  record: Path | None = None) -> tuple[str, str]:
    """(runner, reason) for groups of R runs shaped like `run_cfg` on `device`, given sweep.runner;
    see the module docstring. `record`: runner.json, read and written."""
    if runner != "auto":
        return runner, f"sweep.runner={runner}"
    if R < 2:
        return "sequential", "auto: a single run to train, nothing to batch"
    try:  # e.g. target images kept in the fine-tune (finetune.unlabeled_share): nothing to time
        check_batchable([run_cfg])
    except ValueError as e:
        return "sequential", f"auto: {e}"
    key = {"device": device_name(device), "R": R, "model": dataclasses.asdict(run_cfg.model),
           "batch": run_cfg.train.batch_size, "crop": run_cfg.data.crop, "threads": torch.get_num_threads()}
    if record is not None and record.is_file():
        saved = json.loads(record.read_text())
        if saved.get("key") == key:
            return saved["runner"], saved["reason"] + f" (measured earlier, {record})"
    seq, bat = time_steps(run_cfg, R, device)
    ratio = seq * R / bat
    runner = "batched" if bat < AUTO_MARGIN * seq * R else "sequential"
    reason = (f"auto on {key['device']}: one step of {R} runs took {seq * R * 1e3:.0f} ms one by one "
              f"({seq * 1e3:.1f} ms each) and {bat * 1e3:.0f} ms batched, so batching is {ratio:.2f}x "
              f"{'faster' if ratio >= 1 else 'as fast'}; batched is picked only above {1 / AUTO_MARGIN:.2f}x")
    if record is not None:
        record.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(record, json.dumps({"key": key, "runner": runner, "reason": reason,
                                              "sequential_step_s": seq, "batched_step_s": bat,
                                              "speedup": ratio}, indent=2))
    return runner, reason


# ---------------------------------------------------------------------------------------------
# Running


def _finish(cfg: Config, run: PlannedRun) -> None:
    if not cfg.sweep.keep_checkpoints:
        shutil.rmtree(run.out_dir / "checkpoints", ignore_errors=True)


def _run_sequential(cfg: Config, runs: list[PlannedRun], pool: list[str], test_set: FolderDataset) -> None:
    for i, run in enumerate(runs):
        t0 = time.perf_counter()
        clear_run_files(run.out_dir)  # no result.json: killed part-way (or never started), so start it over
        run_finetune(run_config(cfg, run), console_logging=False, init_name=run.init, pool=pool, test_set=test_set)
        _finish(cfg, run)
        log.info("[%d/%d] %s done in %.1f s (sequential)", i + 1, len(runs), run.name, time.perf_counter() - t0)


def _run_batched(cfg: Config, runs: list[PlannedRun], todo: list[PlannedRun], pool: list[str],
                 test_set: FolderDataset) -> None:
    """Groups cut from the whole plan `runs` (a rerun cuts the same ones); each group with a member in
    `todo` is trained whole, its finished members' results written again, identical."""
    waiting = {r.name for r in todo}
    prepared = [(run, *prepare_finetune(run_config(cfg, run), pool)) for run in runs]
    groups: dict[str, list] = {}
    for item in prepared:
        groups.setdefault(group_key(item[1]), []).append(item)
    chunks = [g[i:i + cfg.sweep.batch_runs] for g in groups.values() for i in range(0, len(g), cfg.sweep.batch_runs)]
    chunks = [c for c in chunks if any(run.name in waiting for run, _, _ in c)]
    runs = [run for c in chunks for run, _, _ in c]
    done = 0
    for chunk in chunks:
        t0 = time.perf_counter()
        try:
            check_batchable([c for _, c, _ in chunk])
            results = run_batched([(c, w) for _, c, w in chunk])
        except NonFiniteMembersError as e:
            log.warning("batched group hit a non-finite loss (%s); running its %d runs one by one instead",
                        e, len(chunk))
            _run_sequential(cfg, [run for run, _, _ in chunk], pool, test_set)
            done += len(chunk)
            continue
        except ValueError as e:
            log.warning("%s; running these %d runs one by one instead", e, len(chunk))
            _run_sequential(cfg, [run for run, _, _ in chunk], pool, test_set)
            done += len(chunk)
            continue
        for (run, run_cfg, _), res in zip(chunk, results, strict=True):
            metrics = evaluate(res.net, run_cfg, run_cfg.data.test_split, test_set)
            if cfg.sweep.keep_checkpoints:
                save_final_weights(Path(run_cfg.train.out_dir) / "checkpoints", run_cfg, res.net, res.step)
            write_result(run_cfg, metrics, res.step, run.init)
        done += len(chunk)
        log.info("[%d/%d] batched group of %d done in %.1f s", done, len(runs), len(chunk), time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------
# Several devices: under the DeepSpeed launcher or torchrun each rank runs its share


POLL_S = 2.0  # how often the reporting rank looks for the other ranks' result.json files


def launcher_rank() -> tuple[int, int]:
    """(rank, world size) of a sweep started by the DeepSpeed launcher or torchrun (both export RANK and
    WORLD_SIZE), (0, 1) otherwise. Each rank's fine-tunes then run as single processes on its device
    (LOCAL_RANK picks the GPU): WORLD_SIZE is set to 1 in this process, so that no fine-tune joins a group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        os.environ["WORLD_SIZE"], os.environ["RANK"] = "1", "0"  # the fine-tunes: one process each
    return rank, world


def rank_share(runs: list[PlannedRun], rank: int, world: int) -> list[PlannedRun]:
    """Every world-th run from `rank` on: a deterministic split that needs no communication."""
    return runs[rank::world]


def wait_for_results(runs: list[PlannedRun]) -> None:
    """The reporting rank waits until every run's result.json exists (the other ranks' shares); the
    launchers stop all ranks when one fails, so a missing result means one still running."""
    t0 = time.perf_counter()
    while missing := [r for r in runs if not (r.out_dir / "result.json").is_file()]:
        if time.perf_counter() - t0 > 60:
            log.info("waiting for %d run(s) of the other ranks: %s", len(missing),
                     ", ".join(r.name for r in missing[:4]))
            t0 = time.perf_counter()
        time.sleep(POLL_S)


def run_sweep(cfg: Config, console_logging: bool = True) -> list[dict]:
    """Runs every planned fine-tune not yet done, then writes the reports; returns the aggregate rows."""
    s = cfg.sweep
    out = Path(s.out_dir)
    check_folder_path("sweep.out_dir", s.out_dir)
    rank, world = launcher_rank()
    if console_logging:
        setup_logging(out, rank)
    runs, pool = plan_sweep(cfg)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "sweep.yaml").is_file():  # a rerun or --resume: say what changed since the last start
        then = yaml.safe_load((out / "sweep.yaml").read_text()) or {}
        changed = config_diff(cfg, then)
        if changed:
            log.info("sweep resumed with changed settings: %s (finished runs whose own config differs are refused)",
                     ", ".join(changed))
    if rank == 0:
        atomic_write_text(out / "sweep.yaml", dumps(cfg))
    mine = rank_share(runs, rank, world)  # this rank's share of the plan (one process: all of it)
    todo = [r for r in mine if not is_done(cfg, r, pool)]
    for run in mine:
        if run not in todo:  # killed after its result, before its snapshots were removed
            _finish(cfg, run)
    log.info("sweep: %d inits x %d budgets x %d seeds = %d runs; this rank %d of them, %d done already, %d to run",
             len(s.inits), len(s.budgets), len(s.seeds), len(runs), len(mine), len(mine) - len(todo), len(todo))
    test_set = FolderDataset(dataclasses.replace(cfg.data, labeled_subset=[]), cfg.data.test_split, train=False)
    t0 = time.perf_counter()
    _run_sequential(cfg, [r for r in todo if r.budget == 0], pool, test_set)  # zero-shot: evaluation only
    todo = [r for r in todo if r.budget]
    if todo:
        device = pick_device(int(os.environ.get("LOCAL_RANK", "0")))
        trained = [r for r in mine if r.budget]  # what the runner and the batched groups are cut from
        # chosen for this rank's whole share, not for what is left: a rerun after a kill chooses the same
        first_cfg, _ = prepare_finetune(run_config(cfg, trained[0]), pool)  # the architecture actually trained
        runner, reason = choose_runner(s.runner, first_cfg, min(len(trained), s.batch_runs), device,
                                       out / "runner.json")
        log.info("sweep runner: %s (%s)", runner, reason)
        if runner == "batched":
            _run_batched(cfg, trained, todo, pool, test_set)
        else:
            _run_sequential(cfg, todo, pool, test_set)
    if world > 1:
        log.info("rank %d of %d: its %d run(s) done", rank, world, len(todo))
        wait_for_results(runs)
    records = [json.loads((r.out_dir / "result.json").read_text()) for r in runs]
    log.info("sweep: %d runs trained in %.1f s", len(todo), time.perf_counter() - t0)
    names = [n for n, _ in parse_inits(s.inits)]
    if rank != 0:  # one rank writes the reports; every rank returns the same rows
        return aggregate(records, names)
    title = (f"{cfg.data.root}, {cfg.data.test_split} split: mean foreground Dice after fine-tuning "
             f"({cfg.train.steps} steps), mean ± std over {len(s.seeds)} seeds")
    return write_reports(records, out, title=title, class_names=s.class_names, inits=names)


def main(argv: list[str] | None = None) -> int:
    """`hybengine sweep --config X [k=v ...]`, or `--resume <sweep.out_dir>` (its sweep.yaml) to continue."""
    from ..cli import guarded, parse_args, resolve

    args = parse_args(__doc__, argv)
    cfg = resolve(args, "sweep")
    if isinstance(cfg, int):
        return cfg
    return guarded("sweep", args.debug, lambda: run_sweep(cfg) and None)


if __name__ == "__main__":
    sys.exit(main())
