"""Where the real CPU training loop's time goes, without a profiler's per-op overhead.

    python benchmarks/cpu_step_phases.py                      # plain and engine, 2 rounds, tiny preset
    python benchmarks/cpu_step_phases.py --configs engine engine-nchw --rounds 2

Each configuration (those of bench_train.py: plain, strong, engine and its variants) runs
`run_training` in its own process, as bench_train.py does, with perf_counter timers around the
loop's phases: data (the loader's next batch), forward (the objective: noise, U-Net, joint loss),
backward, optimizer (clipping, AdamW, zero_grad) and EMA. From the first timed step on, oneDNN's
verbose mode is on, and the execution times it prints for its primitives (convolutions and their
layout reorders) are summed, so `onednn_ms` is the convolution work of a step and `other_ms` the
step less that, both over the same steps;
`faults_per_step` counts the process's minor page faults from one step's forward to the next
(fresh memory the kernel maps and zeroes). torch.profiler, by contrast, adds tens of microseconds
to each of the several hundred small ops of a step (benchmarks/results/cpu_profile_loop_*.txt put
29-49 ms on AdamW's fused step, which takes 3-7 ms here). The first log interval (warm-up) is left
out; per phase the median over the remaining steps. For scale, each row also gives the rate of the oneDNN work,
`onednn_gflops` = the U-Net's FLOPs per training step (3x the forward's torch.utils.flop_counter
count) / onednn_ms, and `matmul_gflops`, an fp32 2048x2048 matrix product on all threads,
measured in the same run: roughly what this CPU's FMA units give to a well-blocked kernel.

Lockstep pairing (benchmarks/lockstep.py): all configurations' processes start together and then
take turns one training step at a time, the order rotating every step, so that this shared host's
swings in speed (2x within minutes) hit step i of every configuration alike. `step_ms` is the
median of the timed steps (a turn: data, forward, backward, optimizer, EMA and bookkeeping) and
`paired_ratio` the median over steps of (first configuration's step i) / (this one's step i), with
its 10th-90th percentile range in `paired_range`: the speed-up over the first configuration named
(plain by default) on the same moments of the host. A round is one such lockstep run (fresh
processes); rows give medians over rounds. Rows go to benchmarks/results/cpu_phases.csv (`method`
lockstep; rows written before it, by whole runs one after another, say `rounds`).
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lockstep  # noqa: E402
import repo_imports  # noqa: E402,F401  (before hybengine: works without an install)
from bench_train import CONFIGS, REPO, engine_config, model_flops_per_image, run_parser  # noqa: E402
from harness import RESULTS, append_rows, environment  # noqa: E402

PHASES = ("data", "forward", "backward", "optimizer", "ema")


def child(name: str, argv: list[str], skip: int) -> None:
    """One configuration's run: prints one JSON line of per-phase medians (ms) and the step time."""
    from hybengine.cli import parse_args, resolve
    from hybengine.training_loop import run_training

    times: dict[str, list[float]] = defaultdict(list)

    @contextmanager
    def phase(name: str):
        if name == "forward":  # a step starts here: minor page faults so far, for faults per step
            times["minflt"].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
            if len(times["forward"]) == skip:  # the first timed step: oneDNN reports from here on
                torch._C._verbose.mkldnn_set_verbose(1)
        t0 = time.perf_counter()
        yield
        times[name].append(time.perf_counter() - t0)

    run_training(resolve(parse_args(None, argv)), console_logging=False, hooks=lockstep.hooks(times, phase=phase))
    result = {"config": name}
    for p in PHASES:
        result[f"{p}_ms"] = 1e3 * statistics.median(times[p][skip:]) if times[p][skip:] else 0.0
    flt = times["minflt"][skip:]
    result["faults_per_step"] = (flt[-1] - flt[0]) / (len(flt) - 1) if len(flt) > 1 else 0.0
    print("PHASES " + json.dumps(result), flush=True)


def onednn_ms(log: str) -> float:
    """Sum of oneDNN's primitive execution times (ms, the last field of its `exec` lines)."""
    total = 0.0
    for line in log.splitlines():
        if line.startswith("onednn_verbose") and ",exec," in line:
            try:
                total += float(line.rsplit(",", 1)[1])
            except ValueError:
                continue
    return total


def run_round(names: list[str], common: list[str], steps: int, skip: int) -> dict[str, dict]:
    """One lockstep round (benchmarks/lockstep.py): all configurations' processes started, then one
    training step each in turn until all have run `steps`. Returns {name: result}."""
    with tempfile.TemporaryDirectory() as tmp:
        commands = {name: [sys.executable, __file__, "--child", name, "--",
                           *(["--config", engine_config("cpu")] if name.startswith("engine") else []), *common,
                           *CONFIGS.get(name, []), f"train.out_dir={tmp}/{name}"] for name in names}
        turns = lockstep.run(commands, steps, cwd=REPO)
    results = {}
    for name, run in turns.items():
        lines = [ln for ln in run.log.splitlines() if ln.startswith("PHASES ")]
        if not lines:
            raise RuntimeError(f"{name} printed no PHASES line:\n{run.log[-3000:]}")
        res = json.loads(lines[-1][len("PHASES "):])
        res["steps_ms"] = run.steps_ms[skip:]
        res["step_ms"] = statistics.median(res["steps_ms"])
        res["onednn_ms"] = onednn_ms(run.log) / (steps - skip)  # verbose from the first timed step on
        results[name] = res
    return results


def matmul_gflops(n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def main() -> None:
    p = run_parser(__doc__, ["plain", "engine"])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=2, help="lockstep runs (fresh processes each)")
    p.add_argument("--csv", default=str(RESULTS / "cpu_phases.csv"))
    p.add_argument("--data", default="demo_data/scratch-assay/fluorescence")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("argv", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args()
    log_every = 6
    if args.child:
        child(args.child, args.argv, skip=log_every)
        return
    if args.steps <= log_every + 1:
        p.error(f"--steps {args.steps}: need more than {log_every + 1} (the first {log_every} are warm-up)")

    common = [f"model.preset={args.preset}", f"train.batch_size={args.batch}", f"data.crop={args.crop}",
              f"data.root={args.data}", f"train.steps={args.steps}", f"train.log_every={log_every}",
              "train.ckpt_every=0", "train.progress=false", "train.ema_halflife_steps=10", "optim.warmup_steps=1",
              "data.num_workers=0"]
    runs: dict[str, list[dict]] = {c: [] for c in args.configs}
    for rnd in range(args.rounds):
        results = run_round(args.configs, common, args.steps, log_every)
        for name, res in results.items():
            runs[name].append(res)
            ratio, spread = lockstep.paired(results[args.configs[0]]["steps_ms"], res["steps_ms"])
            print(f"round {rnd} {name:26s} step {res['step_ms']:7.1f} ms, oneDNN {res['onednn_ms']:6.1f} ms, "
                  f"{res['faults_per_step']:.0f} page faults, x{ratio:.3f} ({spread}) vs {args.configs[0]}",
                  flush=True)

    step_gflop = model_flops_per_image(args.preset, 1, args.crop) * args.batch / 1e9
    mm = matmul_gflops()
    env = environment(torch.device("cpu"))
    rows = []
    keys = ("step_ms", "onednn_ms", *(f"{ph}_ms" for ph in PHASES), "faults_per_step")
    for name, results in runs.items():
        med = {k: statistics.median(r[k] for r in results) for k in keys}
        ratio, spread = lockstep.paired([t for r in runs[args.configs[0]] for t in r["steps_ms"]],
                                        [t for r in results for t in r["steps_ms"]])
        rows.append({"config": name, "preset": args.preset, "batch": args.batch, "crop": args.crop,
                     "rounds": len(results), "method": "lockstep", "paired_vs": args.configs[0],
                     "paired_ratio": round(ratio, 3), "paired_range": spread,
                     **{k: round(v, 1) for k, v in med.items()},
                     "other_ms": round(med["step_ms"] - med["onednn_ms"], 1),
                     "onednn_gflops": round(step_gflop / med["onednn_ms"] * 1e3, 1) if med["onednn_ms"] else "",
                     "matmul_gflops": round(mm, 1),
                     "threads": torch.get_num_threads(),
                     **env})
    append_rows(Path(args.csv), rows)
    cols = ["step_ms", "onednn_ms", "other_ms", *(f"{ph}_ms" for ph in PHASES), "faults_per_step"]
    print("\n" + f"{'config':26s}" + "".join(f"{c.removesuffix('_ms').replace('_per_', '/'):>12s}" for c in cols)
          + f"  {'x ' + args.configs[0] + ' (p10-p90)':>22s}   (ms per step, medians over rounds)")
    for r in rows:
        print(f"{r['config']:26s}" + "".join(f"{r[c]:12.1f}" for c in cols)
              + f"  {r['paired_ratio']:>7.3f} ({r['paired_range']})")
    print(f"U-Net: {step_gflop:.1f} GFLOP per training step; oneDNN work at "
          + ", ".join(f"{r['config']} {r['onednn_gflops']}" for r in rows)
          + f" GFLOP/s; fp32 2048^2 matmul {mm:.1f} GFLOP/s")
    print(f"{len(rows)} rows appended to {args.csv}")


if __name__ == "__main__":
    main()
