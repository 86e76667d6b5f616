"""End-to-end training throughput: plain vs strong vs engine, same U-Net, batch and data, one run.

    python benchmarks/bench_train.py                     # CPU: tiny preset, a few minutes
    python benchmarks/bench_train.py --preset base --batch 32 --crop 128 --steps 160 --log-every 10 --rounds 3  # GPU

Configurations (DESIGN.md, "What fast means"):
  plain   eager, fp32, NCHW, reference GroupNorm+SiLU and loss (nn.GroupNorm/SiLU math), torch
          DataLoader, plain optimizer loop (no ZeRO)
  strong  the same model under bf16 autocast + channels-last + torch.compile, no custom kernels
  engine  the engine's fast path for this device: configs/engine/<cpu|cuda>.yaml (kernels, loader,
          compile, precision and back-end as measured for that device)
  engine-nchw  (only when named in --configs) the engine with model.channels_last=false, to check
          the layout choice of that file
  engine-rows  (only when named) the engine with the channels-last rows GroupNorm-SiLU kernels
  engine-malloc-tuned  (only when named) the engine with train.cpu_malloc=tuned
          (hybengine/runtime/cpu_malloc.py: no page faults for recycled activations; opt-in)
  engine-upsample-subpixel / engine-upsample-reference  (only when named) the engine with the
          U-Net's upsample + 3x3 conv forced to the sub-pixel form (kernels/upsample_conv.py) or to
          the reference, to check the `auto` choice of kernels.upsample_conv on this device
  engine-compile  (only when named) the engine with model.compile=true, to check that choice of
          the CPU file (on CUDA the engine compiles already)
Each configuration is a real `run_training` (the loop train.py runs) in its own process, data loading included.

--method lockstep (the default on CPU): all configurations' runs start together and take turns one
training step at a time, the order rotating every step (benchmarks/lockstep.py). This shared
2-core host changes speed by up to 2x within minutes, which whole runs one after another cannot
pair out (the rounds rows of train.csv: paired medians of 0.79, 1.39 and 1.07 for the same code).
Images/s come from each timed step (batch / step time); the first `log_every` steps are warm-up,
and `warmup_s` is their time less as many steady steps (compile, first-touch). The paired ratio
is the median over steps of this configuration's speed over plain's (or strong's) at the same
step, its range the 10th-90th percentile. `--rounds` lockstep runs are pooled.

--method rounds (the default on CUDA, where a step's GPU work is asynchronous to the loop that a
turn would time): whole runs one after another over `--rounds` rounds (at least 3 on a GPU), the
order reversed every other round, each run at least 150 timed steps there. Each run is
`run_training` in its own process (`--child`, LoopHooks only) with `gc.freeze()` after its first
step, so the collector does not walk the set-up's objects during timed steps; before round 0 one
short untimed run per configuration fills the compile caches on disk (`--warm-runs`), so every
timed run starts warm. Images/s per `log_every` interval of metrics.jsonl (each interval ends with
the log's host read, so GPU work is inside it); the first interval (warm-up) is excluded and
reported as warm-up seconds. The paired ratio pairs interval k of a configuration with interval k
of plain (or strong) in the same round, pooled over rounds: its median, and its 10th-90th
percentile as the interval, as the lockstep rows do; the per-round medians' ratios are printed.
Rows go to benchmarks/results/train.csv with the method, device, versions, date and commit, at
the end. Rounds also write each round's rows (images/s per interval, the paired ratio within the
round) to --rounds-csv as soon as the round ends, so a run cut short by a time limit keeps what it
measured; --budget-s starts no round that the longest round so far would carry past the budget.

On a GPU the script also reports the model FLOPs per image (counted with
torch.utils.flop_counter on one forward; training step = 3x forward) and MFU against the assumed
dense bf16 peak `--peak-tflops` (H100 SXM: 989 TFLOP/s datasheet).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lockstep  # noqa: E402
import repo_imports  # noqa: E402, F401  (before hybengine: works without an install)
import torch  # noqa: E402
from harness import RESULTS, append_rows, environment  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REFERENCE_OPS = ["kernels.group_norm_silu=reference", "kernels.hybrid_loss=reference",
                 "kernels.upsample_conv=reference"]
PLAIN_TORCH = ["data.loader=torch", "train.backend=plain"]
CONFIGS = {
    "plain": ["model.compile=false", "model.channels_last=false", "train.precision=fp32", *REFERENCE_OPS,
              *PLAIN_TORCH],
    "strong": ["model.compile=true", "model.channels_last=true", "train.precision=bf16", *REFERENCE_OPS,
               *PLAIN_TORCH],
    "engine-nchw": ["model.channels_last=false"],  # on top of the engine file
    "engine-rows": ["kernels.group_norm_silu_channels_last=rows"],  # the rows GroupNorm-SiLU kernels
    "engine-malloc-tuned": ["train.cpu_malloc=tuned"],  # the engine with glibc malloc tuned (opt-in)
    "engine-upsample-subpixel": ["kernels.upsample_conv=subpixel"],  # sub-pixel upsample conv (CUDA check)
    "engine-upsample-reference": ["kernels.upsample_conv=reference"],  # upsample, then 3x3 conv (CPU check)
    "engine-compile": ["model.compile=true"],  # the engine compiled (CPU check: off in cpu.yaml)
}
CONFIG_NAMES = ["plain", "strong", "engine", *(c for c in CONFIGS if c.startswith("engine"))]


def engine_config(device: str) -> str:
    return str(REPO / "configs" / "engine" / f"{device}.yaml")


def train_args(name: str, common: list[str], device: str, out: Path) -> list[str]:
    """hybengine/train.py's arguments for one configuration."""
    engine = ["--config", engine_config(device)] if name.startswith("engine") else []
    return [*engine, *common, *CONFIGS.get(name, []), f"train.out_dir={out}"]


def run_one(name: str, common: list[str], device: str, out: Path, env: dict) -> list[dict]:
    args = [sys.executable, str(Path(__file__).resolve()), "--child", "--", *train_args(name, common, device, out)]
    r = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{name} failed (exit code {r.returncode}):\n{r.stderr[-4000:]}")
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def common_args(preset: str, batch: int, crop: int, data: str, steps: int, log_every: int, device: str) -> list[str]:
    """The train.py overrides every configuration shares (size, data, run length, bookkeeping)."""
    return [f"model.preset={preset}", f"train.batch_size={batch}", f"data.crop={crop}", f"data.root={data}",
            f"train.steps={steps}", f"train.log_every={log_every}", "train.ckpt_every=0", "train.progress=false",
            "train.ema_halflife_steps=10", "optim.warmup_steps=1",
            "data.num_workers=0" if device == "cpu" else "data.num_workers=4"]


def _quantile(values: list[float], k: int) -> float:
    """k-th of the 4 cut points between quintiles (0: p20, 3: p80); a single value is its own quantile."""
    return statistics.quantiles(values, n=5)[k] if len(values) > 1 else values[0]


def _engine_summary(device: str) -> str:
    lines = Path(engine_config(device)).read_text().splitlines()
    return " | ".join(ln.split("#")[0].rstrip() for ln in lines if ln.split("#")[0].strip())


def paired_ratios(per_round: list[dict[str, float]], name: str) -> dict[str, object]:
    """Median and range of `name`'s per-round ratio to plain and to strong (rounds where both ran)."""
    out: dict[str, object] = {}
    for base in ("plain", "strong"):
        ratios = [r[name] / r[base] for r in per_round if name in r and base in r]
        out[f"paired_vs_{base}"] = round(statistics.median(ratios), 3) if ratios else ""
        out[f"paired_vs_{base}_range"] = f"{min(ratios):.3f}-{max(ratios):.3f}" if ratios else ""
    return out


def model_flops_per_image(preset: str, image_channels: int, crop: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    from hybengine.config import ModelConfig
    from hybengine.unet import build_unet

    net = build_unet(ModelConfig(preset=preset), image_channels, 3)
    with FlopCounterMode(display=False) as counter:
        net(torch.randn(1, image_channels, crop, crop), torch.zeros(1))
    return 3.0 * counter.get_total_flops()  # forward + backward (~2x forward)


def child(argv: list[str]) -> None:
    """One timed run (--method rounds): run_training with gc.freeze() once its first step is done."""
    import gc

    from hybengine.cli import parse_args, resolve
    from hybengine.training_loop import LoopHooks, run_training

    def on_step(step: int) -> None:
        if step == 1:  # set-up done, first step's buffers allocated: later collections skip all that
            gc.collect()
            gc.freeze()

    cfg = resolve(parse_args(None, argv))
    if isinstance(cfg, int):
        sys.exit(cfg)
    run_training(cfg, console_logging=False, hooks=LoopHooks(on_step=on_step))


def paired_intervals(per_round: list[dict[str, list[float]]], name: str) -> dict[str, object]:
    """`name`'s images/s over plain's (and strong's), interval k with interval k of the same round,
    pooled over rounds: median and 10th-90th percentile."""
    out: dict[str, object] = {}
    for base in ("plain", "strong"):
        this, other = [], []
        for r in per_round:
            if name in r and base in r:
                n = min(len(r[name]), len(r[base]))
                this += [1.0 / v for v in r[name][:n]]
                other += [1.0 / v for v in r[base][:n]]
        ratio, spread = lockstep.paired(other, this) if this else (None, "")
        out[f"paired_vs_{base}"] = round(ratio, 3) if ratio is not None else ""
        out[f"paired_vs_{base}_range"] = spread
    return out


def round_rows(rnd: int, intervals: dict[str, list[float]], args, env_row: dict) -> list[dict]:
    """One row per configuration of round `rnd` (written as soon as the round ends, so a run cut short
    keeps its finished rounds): the median images/s of its timed intervals, every interval (pooling the
    rounds later needs them), and the paired ratio within the round."""
    rows = []
    for name, timed in intervals.items():
        paired = paired_intervals([intervals], name)
        rows.append({"round": rnd, "config": name, "preset": args.preset, "batch": args.batch, "crop": args.crop,
                     "images_per_s": round(statistics.median(timed), 2), **paired,
                     "intervals_images_per_s": " ".join(f"{v:.2f}" for v in timed), **env_row})
    return rows


def run_rounds(args, common, device, env, ips, warm, mem) -> dict[str, dict]:
    """Whole runs one after another, the order reversed every round; paired ratios per interval.
    Each finished round's rows go to --rounds-csv at once; with --budget-s no round starts that the
    longest round so far would carry past the budget."""
    per_round: list[dict[str, float]] = []  # round -> configuration -> median images/s of that run
    intervals: list[dict[str, list[float]]] = []  # round -> configuration -> images/s per timed interval
    env_row = environment(torch.device(device))
    start, longest = time.perf_counter(), 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs if args.warm_runs else []:
            warm_common = [*common, f"train.steps={args.log_every + 2}"]  # a short run: compiles, fills caches
            try:
                run_one(name, warm_common, device, Path(tmp) / f"{name}_warm", env)
                print(f"warm-up run {name}: done", flush=True)
            except RuntimeError as e:
                print(f"warm-up run {name}: FAILED\n{e}", flush=True)
        for rnd in range(args.rounds):
            elapsed = time.perf_counter() - start
            if args.budget_s is not None and rnd > 0 and elapsed + longest > args.budget_s:
                print(f"budget of {args.budget_s:.0f}s: {elapsed:.0f}s spent, a round takes up to {longest:.0f}s; "
                      f"stopping after {rnd} rounds", flush=True)
                break
            t_round = time.perf_counter()
            intervals.append({})
            per_round.append({})
            for name in (args.configs if rnd % 2 == 0 else args.configs[::-1]):
                try:
                    recs = run_one(name, common, device, Path(tmp) / f"{name}{rnd}", env)
                except RuntimeError as e:  # keep the other configurations' rows
                    print(f"round {rnd} {name}: FAILED\n{e}", flush=True)
                    continue
                timed = [r["images_per_s"] for r in recs[1:]]
                ips[name] += timed
                intervals[-1][name] = timed
                per_round[-1][name] = statistics.median(timed)
                step_s = args.log_every * args.batch / statistics.median(timed)
                warm[name].append(recs[0]["time"] - step_s)
                mem[name] = max(mem.get(name, 0.0), recs[-1]["peak_mem_mb"])
                print(f"round {rnd} {name:11s} {statistics.median(timed):8.1f} img/s", flush=True)
            longest = max(longest, time.perf_counter() - t_round)
            append_rows(Path(args.rounds_csv), round_rows(rnd, intervals[-1], args, env_row))
    for name in args.configs:
        by_round = paired_ratios(per_round, name)
        print(f"{name}: per-round ratio of medians x plain {by_round['paired_vs_plain']} "
              f"({by_round['paired_vs_plain_range']}), x strong {by_round['paired_vs_strong']} "
              f"({by_round['paired_vs_strong_range']})", flush=True)
    return {name: paired_intervals(intervals, name) for name in args.configs}


def run_lockstep(args, common, device, env, ips, warm, mem) -> dict[str, dict]:
    """All configurations at once, taking turns one step at a time (benchmarks/lockstep.py); paired
    ratios per step. The first `log_every` steps are warm-up."""
    steps: dict[str, list[float]] = {c: [] for c in args.configs}  # timed step times (ms), rounds end to end
    for rnd in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            commands = {name: [sys.executable, str(REPO / "benchmarks" / "lockstep.py"), "--",
                               *train_args(name, common, device, Path(tmp) / name)] for name in args.configs}
            try:
                turns = lockstep.run(commands, args.steps, cwd=REPO, env=env)
            except RuntimeError as e:
                print(f"round {rnd}: FAILED\n{e}", flush=True)
                continue
            for name, t in turns.items():
                timed = t.steps_ms[args.log_every:]
                steps[name] += timed
                ips[name] += [1e3 * args.batch / ms for ms in timed]
                # compile and first-step costs: the warm-up steps less as many steady ones
                warm[name].append((sum(t.steps_ms[:args.log_every]) - args.log_every * statistics.median(timed)) / 1e3)
                recs = (Path(tmp) / name / "metrics.jsonl").read_text().splitlines()
                mem[name] = max(mem.get(name, 0.0), json.loads(recs[-1])["peak_mem_mb"])
                print(f"round {rnd} {name:11s} {1e3 * args.batch / statistics.median(timed):8.1f} img/s", flush=True)
    out = {}
    for name in args.configs:
        out[name] = {}
        for base in ("plain", "strong"):
            ratio, spread = (lockstep.paired(steps[base], steps[name]) if base in args.configs and steps[name]
                             and steps[base] else (None, ""))
            out[name][f"paired_vs_{base}"] = round(ratio, 3) if ratio is not None else ""
            out[name][f"paired_vs_{base}_range"] = spread
    return out


def engine_steps(args) -> int:
    """A few steps of the engine configuration (compiled on CUDA: configs/engine/cuda.yaml), the whole
    loop in its own process: the preflight of a GPU run. 0 when every step's loss is finite."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    common = common_args(args.preset, args.batch, args.crop, args.data, args.compiled_steps, 1, device)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            recs = run_one("engine", common, device, Path(tmp) / "engine", {**os.environ, "PYTHONUNBUFFERED": "1"})
        except RuntimeError as e:
            print(f"FAIL engine steps: {e}", flush=True)
            return 1
    losses = [r.get("loss") for r in recs]
    ok = len(recs) == args.compiled_steps and all(v is not None and v == v and abs(v) < float("inf") for v in losses)
    print(f"steps {'ok' if ok else 'FAIL'}: {len(recs)} engine steps ({_engine_summary(device)}), "
          f"losses {losses}, {time.perf_counter() - t0:.0f}s with start-up and compile", flush=True)
    return 0 if ok else 1


def run_parser(doc: str | None, configs: list[str] | None = None) -> argparse.ArgumentParser:
    """The options every training benchmark shares: --preset, --batch, --crop and, when `configs` gives
    its default, --configs (names from CONFIG_NAMES)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if configs is not None:
        p.add_argument("--configs", nargs="+", default=configs, choices=CONFIG_NAMES)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=64)
    return p


def main() -> None:
    p = run_parser(__doc__)
    p.add_argument("--steps", type=int, default=36, help="steps per run; the first log interval is warm-up")
    p.add_argument("--log-every", type=int, default=6)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--configs", nargs="+", default=["plain", "strong", "engine"], choices=CONFIG_NAMES)
    p.add_argument("--peak-tflops", type=float, default=989.0)
    p.add_argument("--csv", default=str(RESULTS / "train.csv"))
    p.add_argument("--rounds-csv", default=None,
                   help="rounds: each round's rows as soon as it ends (default: the --csv name + _rounds)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="rounds: start no round that the longest one so far would carry past this")
    p.add_argument("--data", default="demo_data/scratch-assay/fluorescence")
    p.add_argument("--method", choices=["lockstep", "rounds"], default=None,
                   help="lockstep (default on CPU) or rounds (default on CUDA, where a step's work is async)")
    p.add_argument("--warm-runs", type=int, choices=[0, 1], default=None,
                   help="rounds: one short untimed run per configuration first (default 1 on CUDA, 0 on CPU)")
    p.add_argument("--compiled-steps", type=int, default=None,
                   help="only run the engine configuration for this many steps and report (a preflight)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("train_args", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.train_args)
        return
    if args.compiled_steps:
        sys.exit(engine_steps(args))
    args.method = args.method or ("lockstep" if not torch.cuda.is_available() else "rounds")
    if args.rounds_csv is None:
        args.rounds_csv = str(Path(args.csv).with_name(Path(args.csv).stem + "_rounds.csv"))
    if args.warm_runs is None:
        args.warm_runs = int(torch.cuda.is_available())
    if args.method == "rounds" and torch.cuda.is_available() and (
            args.rounds < 3 or args.steps - args.log_every < 150):
        print(f"warning: {args.rounds} rounds of {args.steps - args.log_every} timed steps: a 5% difference "
              "needs at least 3 rounds of 150 timed steps on a GPU", flush=True)
    if args.steps <= args.log_every + 1:
        p.error(f"--steps {args.steps}: need more than --log-every + 1 = {args.log_every + 1} (the first "
                f"{args.log_every} are warm-up, the last is not timed in lockstep)")

    device = "cuda" if torch.cuda.is_available() else "cpu"
    common = common_args(args.preset, args.batch, args.crop, args.data, args.steps, args.log_every, device)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ips: dict[str, list[float]] = {c: [] for c in args.configs}
    warm: dict[str, list[float]] = {c: [] for c in args.configs}
    mem: dict[str, float] = {}
    if args.method == "lockstep":
        paired = run_lockstep(args, common, device, env, ips, warm, mem)
    else:
        paired = run_rounds(args, common, device, env, ips, warm, mem)

    med = {c: statistics.median(v) for c, v in ips.items() if v}
    if not med:
        sys.exit("every run failed: no rows")
    env_row = environment(torch.device(device))
    flops = model_flops_per_image(args.preset, 1, args.crop) if device == "cuda" else None
    rows = []
    for name in med:
        row = {"config": name, "preset": args.preset, "batch": args.batch, "crop": args.crop,
               "images_per_s": round(med[name], 2), "p20": round(_quantile(ips[name], 0), 2),
               "p80": round(_quantile(ips[name], 3), 2), "intervals": len(ips[name]),
               "warmup_s": round(statistics.median(warm[name]), 2), "peak_mem_mb": round(mem[name], 1),
               "vs_plain": round(med[name] / med["plain"], 3) if "plain" in med else "",
               "vs_strong": round(med[name] / med["strong"], 3) if "strong" in med else "",
               "method": args.method, **paired[name],
               "mfu": round(flops * med[name] / (args.peak_tflops * 1e12), 4) if flops else "",
               "engine_config": (" | ".join([_engine_summary(device), *CONFIGS.get(name, [])])
                                 if name.startswith("engine") else ""),
               **env_row}
        rows.append(row)
    append_rows(Path(args.csv), rows)
    print(f"\n{'config':11s} {'img/s':>9s} {'warm-up s':>10s} {'peak MiB':>9s} {'x plain':>8s} {'x strong':>9s}"
          f"  {'paired x plain (range)':>24s}")
    for r in rows:
        paired = f"{r['paired_vs_plain']} ({r['paired_vs_plain_range']})" if r["paired_vs_plain"] != "" else ""
        print(f"{r['config']:11s} {r['images_per_s']:9.1f} {r['warmup_s']:10.1f} {r['peak_mem_mb']:9.0f} "
              f"{r['vs_plain']!s:>8s} {r['vs_strong']!s:>9s}  {paired:>24s}")
    if flops:
        print(f"model FLOPs per training image: {flops / 1e9:.2f} GFLOP (3x forward, flop_counter); "
              f"MFU against {args.peak_tflops} TFLOP/s: " + ", ".join(f"{r['config']} {r['mfu']}" for r in rows))
    print(f"{len(rows)} rows appended to {args.csv}")


if __name__ == "__main__":
    main()
