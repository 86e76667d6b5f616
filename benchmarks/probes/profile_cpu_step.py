"""Where a CPU training step spends its time, and which per-op choices win (issue 6).

    python benchmarks/probes/profile_cpu_step.py                 # variants, interleaved, median ms/step
    python benchmarks/probes/profile_cpu_step.py --profile native-fp32-nchw   # torch.profiler top ops
    python benchmarks/probes/profile_cpu_step.py --profile-loop engine        # top ops of the real loop

One step = the training loop's work on one batch (objective forward through the U-Net and the
joint loss, backward, AdamW step), on a fixed in-memory batch so that only compute is timed (data
loading is timed by bench_train.py, which runs the real loop). Variants differ in the op path
(reference ATen vs the fused op with its native C++ CPU body and the sub-pixel upsample conv,
kernels/upsample_conv.py; cpu_step.csv rows from before that op ran the reference upsample), the
precision (fp32 vs bf16 autocast) and the memory format; they are timed round-robin so a load spike hits all of them.
Rows go to benchmarks/results/cpu_step.csv.
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: harness, repo_imports
import repo_imports  # noqa: E402,F401  (before hybengine: works without an install)
from harness import RESULTS, append_rows, environment  # noqa: E402

from hybengine import ops  # noqa: E402
from hybengine.config import KernelConfig, ModelConfig, ObjectiveConfig  # noqa: E402
from hybengine.objective import HybridObjective  # noqa: E402
from hybengine.unet import build_unet  # noqa: E402


def make_step(ops_path: str, precision: str, layout: str, preset: str, batch: int, crop: int,
              compiled: bool = False):
    upsample = "reference" if ops_path == "reference" else "subpixel"
    kernels = KernelConfig(group_norm_silu=ops_path, hybrid_loss=ops_path, upsample_conv=upsample)
    variant_ops = ops.resolve_ops(kernels, "cpu")  # this variant's ops, handed to its net and objective
    torch.manual_seed(0)
    net = build_unet(ModelConfig(preset=preset), 1, 3, variant_ops)
    if layout == "nhwc":
        net = net.to(memory_format=torch.channels_last)
    if compiled:
        net.forward = torch.compile(net.forward, fullgraph=True)  # as the training loop does
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    objective = HybridObjective(ObjectiveConfig(), ignore_index=255, ops=variant_ops)
    x = torch.randn(batch, 1, crop, crop)
    if layout == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 3, (batch, crop, crop))
    gen = torch.Generator().manual_seed(0)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else nullcontext

    def step():
        with autocast():
            den, mask = objective(net, x, y, gen)
        (den + mask).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def profile_loop(name: str, preset: str, batch: int, crop: int, steps: int) -> None:
    """Top ops of `steps` steps of the training loop, as bench_train.py runs configuration `name`."""
    import tempfile

    from bench_train import CONFIGS, engine_config

    from hybengine.cli import parse_args, resolve
    from hybengine.training_loop import run_training

    with tempfile.TemporaryDirectory() as out:
        argv = (["--config", engine_config("cpu")] if name == "engine" else []) + [
            f"model.preset={preset}", f"train.batch_size={batch}", f"data.crop={crop}",
            "data.root=demo_data/scratch-assay/fluorescence", f"train.steps={steps}", f"train.log_every={steps}",
            "train.ckpt_every=0", "train.progress=false", "train.ema_halflife_steps=10", "optim.warmup_steps=1",
            "data.num_workers=0", *CONFIGS.get(name, []), f"train.out_dir={out}"]
        cfg = resolve(parse_args(None, argv))
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            run_training(cfg, console_logging=False)
    print(f"{name}: {steps} steps of run_training ({preset}, batch {batch}, {crop}x{crop}); "
          f"{environment(torch.device('cpu'))}")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant per round")
    p.add_argument("--ops", nargs="+", default=["reference", "fused"])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--layouts", nargs="+", default=["nchw", "nhwc"])
    p.add_argument("--variants", nargs="*", default=None,
                   help="explicit variants <ops>-<precision>-<layout>[-compile], e.g. fused-fp32-nhwc-compile")
    p.add_argument("--profile", default=None, help="variant name, e.g. fused-fp32-nchw: print top ops")
    p.add_argument("--profile-loop", choices=["plain", "engine"], default=None,
                   help="torch.profiler over run_training itself (data, EMA, logging included) with the "
                        "bench_train.py configuration of that name, --steps x 4 steps")
    p.add_argument("--csv", default=str(RESULTS / "cpu_step.csv"))
    args = p.parse_args()
    if args.profile_loop:
        profile_loop(args.profile_loop, args.preset, args.batch, args.crop, 4 * args.steps)
        return

    def build(name: str):
        ops_path, precision, layout, *rest = name.split("-")
        return make_step(ops_path, precision, layout, args.preset, args.batch, args.crop, rest == ["compile"])

    if args.profile:
        step = build(args.profile)
        for _ in range(2):
            step()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
        return

    names = args.variants or [f"{o}-{pr}-{la}" for o, pr, la in
                              itertools.product(args.ops, args.precisions, args.layouts)]
    variants = {name: build(name) for name in names}
    for step in variants.values():  # warm-up: allocator, oneDNN primitive caches, compilation
        step()
        step()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, step in variants.items():
            for _ in range(args.steps):
                t0 = time.perf_counter()
                step()
                times[name].append(1e3 * (time.perf_counter() - t0))
    base = statistics.median(times[next(iter(variants))])
    env = environment(torch.device("cpu"))
    rows = []
    for name, ts in times.items():
        ms = statistics.median(ts)
        rows.append({"variant": name, "preset": args.preset, "batch": args.batch, "crop": args.crop,
                     "ms_p50": round(ms, 2), "ms_min": round(min(ts), 2), "speedup_vs_first": round(base / ms, 3),
                     "threads": torch.get_num_threads(), **env})
        print(f"{name:26s} {ms:8.1f} ms/step (min {min(ts):.1f})  x{base / ms:.2f} vs {next(iter(variants))}")
    append_rows(Path(args.csv), rows)
    print(f"{len(rows)} rows appended to {args.csv}")


if __name__ == "__main__":
    main()
