"""Where a training step's time goes, by op family, for two (or more) configurations side by side.

    python benchmarks/profile_step.py                                  # CPU: plain vs engine, tiny
    python benchmarks/profile_step.py --configs strong engine --preset base --batch 32 --crop 128   # GPU
    python benchmarks/profile_step.py --check-sync                     # host reads per step (below)

Each configuration (bench_train.py's definitions: plain, strong, engine, ...) is one real
`run_training` in its own process, with LoopHooks only (no patching): the loop's phases
(forward, backward, optimizer, ema) and the loader's next batch ("data") become profiler
annotations, and each optimizer step a profiler step. After `--warmup` steps, `--steps` steps run
under torch.profiler; each child writes its Chrome trace (`<out>/<config>.trace.json`, open in
chrome://tracing or Perfetto) and its times per family; the parent prints one table.

Families: a time goes to the first that matches. Inside the optimizer / ema / data annotations:
that phase. Else by the op names on its call chain, outermost first (so an op's internals count
to the op; a compiled kernel by the name inductor gives it, e.g. triton_per_fused_native_group_norm_*):
convolutions; GroupNorm-SiLU (fused op, GroupNorm, SiLU); the joint loss (fused op, cross entropy /
log-softmax / NLL / MSE); matmul/attention; copies and layout changes (copy_, contiguous, clone,
cat, memcpy); else other elementwise. On a GPU the times are device (kernel)
times, a kernel placed by the op that launched it, and "idle" is the profiled span in which no
kernel ran (the GPU waiting for the host). On a CPU the times are the ops' self CPU times, and
"host outside ops" is the step's wall time not spent in any op (the loop's Python, annotations).

--check-sync runs a few steps under a TorchFunctionMode that counts host reads of tensors
(item, bool, float, int, tolist, numpy, equal, ...) per step, outside the loader, and on CUDA also
under torch.cuda.set_sync_debug_mode("error") for the steps that must not read; it fails (exit 1)
when a step other than a log or snapshot step reads (tests/test_step_host_sync.py runs it on CPU).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import repo_imports  # noqa: E402,F401  (before hybengine: works without an install)
from bench_train import REPO, common_args, run_parser, train_args  # noqa: E402
from harness import environment  # noqa: E402

SCOPES = ("optimizer", "ema", "data")  # annotations whose whole content is one family
NAME_RULES = [  # (family, substrings of a lower-cased op or kernel name)
    ("convolution", ("conv", "winograd")),
    ("groupnorm_silu", ("group_norm", "groupnorm", "silu")),
    ("joint loss", ("hybrid_loss", "hybridloss", "cross_entropy", "log_softmax", "logsoftmax", "nll_loss",
                    "nllloss", "mse_loss")),
    ("matmul/attention", ("aten::mm", "aten::bmm", "addmm", "linear", "matmul", "scaled_dot_product",
                          "attention", "gemm")),
    ("copy/layout", ("aten::copy_", "aten::clone", "aten::contiguous", "aten::_to_copy", "aten::cat", "memcpy",
                     "memset", "copybackwards", "clonebackward", "catbackward")),
]
FAMILIES = ["convolution", "groupnorm_silu", "joint loss", "matmul/attention", "copy/layout",
            "other elementwise", "optimizer", "ema", "data"]
HOST_READS = {"__bool__", "item", "tolist", "__float__", "__int__", "__index__", "numpy", "__array__", "equal",
              "allclose", "is_nonzero", "__format__", "__repr__"}


def _chain(evt) -> list:
    """The event and its CPU parents, outermost first."""
    out = []
    while evt is not None:
        out.append(evt)
        evt = evt.cpu_parent
    return out[::-1]


def family(chain: list) -> str:
    for e in chain:
        if e.name in SCOPES:
            return e.name
    for e in chain:
        name = e.name.lower()
        for fam, keys in NAME_RULES:
            if any(k in name for k in keys):
                return fam
    return "other elementwise"


def _is_annotation(evt) -> bool:
    return evt.name in ("forward", "backward", *SCOPES) or evt.name.startswith("ProfilerStep")


def summarize(events, steps: int, on_gpu: bool) -> dict[str, float]:
    """Milliseconds per step by family (+ "idle" on a GPU, "host outside ops" on a CPU, "step")."""
    from torch.autograd import DeviceType

    ms: dict[str, float] = defaultdict(float)
    cpu = [e for e in events if e.device_type == DeviceType.CPU]
    wall_us = sum(e.time_range.elapsed_us() for e in cpu if e.name.startswith("ProfilerStep"))
    if on_gpu:
        by_id = {e.id: e for e in cpu}
        kernels = [e for e in events if e.device_type == DeviceType.CUDA]
        for k in kernels:
            launcher = by_id.get(getattr(k, "linked_correlation_id", 0))
            chain = _chain(launcher) if launcher is not None else []
            ms[family([*chain, k])] += k.time_range.elapsed_us() / 1e3
        spans = sorted((k.time_range.start, k.time_range.end) for k in kernels)
        busy, end = 0.0, float("-inf")
        for a, b in spans:  # union of kernel intervals
            if b > end:
                busy += b - max(a, end)
                end = b
        span = (spans[-1][1] - spans[0][0]) if spans else 0.0
        ms["idle"] = (span - busy) / 1e3
        wall_us = max(wall_us, span)
    else:
        host = 0.0
        for e in cpu:
            if _is_annotation(e) and e.name not in SCOPES:
                host += e.self_cpu_time_total  # the loop's own Python between ops
            else:
                ms[family(_chain(e))] += e.self_cpu_time_total / 1e3
        ms["host outside ops"] = host / 1e3
    out = {k: v / steps for k, v in ms.items()}
    out["step"] = wall_us / 1e3 / steps
    return out


def _hooks(prof=None, on_step=None):
    from torch.profiler import record_function

    from hybengine.training_loop import LoopHooks

    def wrap_loader(loader):
        it = iter(loader)
        while True:
            with record_function("data"):
                batch = next(it)
            yield batch

    def step(n: int) -> None:
        if on_step is not None:
            on_step(n)
        if prof is not None:
            prof.step()

    return LoopHooks(wrap_loader=wrap_loader, phase=record_function, on_step=step)


def child(name: str, argv: list[str], warmup: int, steps: int, trace: Path) -> None:
    """One configuration under the profiler; prints `PROFILE {json}`."""
    from torch.profiler import ProfilerActivity, profile, schedule

    from hybengine.cli import parse_args, resolve
    from hybengine.training_loop import run_training

    cfg = resolve(parse_args(None, argv))
    on_gpu = torch.cuda.is_available()
    if not on_gpu:  # inductor's C++ kernels get a profiler event each (named after what they fuse)
        import torch._inductor.config as inductor_config

        inductor_config.cpp.enable_kernel_profile = True
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if on_gpu else [])]
    result: dict = {"config": name}

    def ready(p) -> None:
        p.export_chrome_trace(str(trace))
        result.update(summarize(p.events(), steps, on_gpu))

    with profile(activities=activities, schedule=schedule(wait=0, warmup=warmup, active=steps, repeat=1),
                 on_trace_ready=ready) as prof:
        run_training(cfg, console_logging=False, hooks=_hooks(prof))
    print("PROFILE " + json.dumps(result), flush=True)


class HostReads(torch.overrides.TorchFunctionMode):
    """Counts calls that read a tensor's value on the host, into `counts[current]`; paused in the loader."""

    def __init__(self):
        super().__init__()
        self.counts: dict[int, list[str]] = defaultdict(list)
        self.current, self.paused = 0, False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if not self.paused and name in HOST_READS:
            self.counts[self.current].append(name)
        return func(*args, **(kwargs or {}))


def host_reads_per_step(cfg) -> tuple[dict[int, list[str]], set[int]]:
    """Runs `cfg` and returns {k: host reads after step k's optimizer step up to step k+1's},
    and the steps where reads are allowed (log and snapshot steps). On CUDA the other intervals also
    run under torch.cuda.set_sync_debug_mode("error"), which raises on any synchronizing call."""
    from hybengine.training_loop import LoopHooks, run_training

    t = cfg.train
    allowed = {s for s in range(1, t.steps + 1)
               if s % t.log_every == 0 or (t.ckpt_every and s % t.ckpt_every == 0) or s == t.steps}
    mode = HostReads()
    cuda = torch.cuda.is_available()

    def wrap_loader(loader):
        it = iter(loader)
        while True:
            mode.paused = True
            try:
                batch = next(it)
            finally:
                mode.paused = False
            yield batch

    def on_step(n: int) -> None:
        mode.current = n
        if cuda:
            torch.cuda.set_sync_debug_mode("default" if n in allowed else "error")

    try:
        with mode:
            run_training(cfg, console_logging=False, hooks=LoopHooks(wrap_loader=wrap_loader, on_step=on_step))
    finally:
        if cuda:
            torch.cuda.set_sync_debug_mode("default")
    return dict(mode.counts), allowed


def check_sync(argv: list[str]) -> int:
    from hybengine.cli import parse_args, resolve

    cfg = resolve(parse_args(None, argv))
    counts, allowed = host_reads_per_step(cfg)
    bad = {k: v for k, v in counts.items() if k >= 1 and k not in allowed and v}
    for k in sorted(counts):
        print(f"after step {k:3d}{' (log/snapshot)' if k in allowed else '':15s}: {len(counts[k])} host reads "
              f"{sorted(set(counts[k]))}")
    print("FAIL: host reads inside steps " + str(sorted(bad)) if bad else "OK: no host read outside log/snapshot steps")
    return 1 if bad else 0


def table(results: list[dict]) -> str:
    on_gpu = "idle" in results[0]
    rows = [*FAMILIES, "idle" if on_gpu else "host outside ops"]
    unit = "device ms/step" if on_gpu else "CPU ms/step"
    head = f"{'family':20s}" + "".join(f"{r['config'] + ' ' + unit:>26s}{'%':>7s}" for r in results)
    lines = [head]
    for fam in [*rows, "step"]:
        line = f"{fam:20s}"
        for r in results:
            v = r.get(fam, 0.0)
            line += f"{v:26.2f}{100 * v / r['step']:7.1f}" if r["step"] else f"{v:26.2f}{'':7s}"
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    p = run_parser(__doc__, ["plain", "engine"])
    p.add_argument("--warmup", type=int, default=4, help="steps before profiling (compile, first touch)")
    p.add_argument("--steps", type=int, default=10, help="profiled steps")
    p.add_argument("--data", default="demo_data/scratch-assay/fluorescence")
    p.add_argument("--out", default=None, help="folder for traces and the table (default: a temp folder)")
    p.add_argument("--table", default=None, help="also write the table here (e.g. under benchmarks/results/)")
    p.add_argument("--check-sync", action="store_true", help="count host reads per step instead (see above)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--trace", default=None, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="extra train.py overrides (after --), for every configuration")
    args = p.parse_args()
    if args.child:
        child(args.child, args.overrides, args.warmup, args.steps, Path(args.trace))
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.check_sync:
        with tempfile.TemporaryDirectory() as tmp:
            common = common_args(args.preset, args.batch, args.crop, args.data, 7, 3, device)
            argv = train_args(args.configs[-1], [*common, "train.ckpt_every=5", *args.overrides], device,
                              Path(tmp) / "run")
            sys.exit(check_sync(argv))
    out = Path(args.out or tempfile.mkdtemp(prefix="profile_step_"))
    out.mkdir(parents=True, exist_ok=True)
    # log_every past the profiled window: its host read stays out of the profile (one run-end log)
    common = [*common_args(args.preset, args.batch, args.crop, args.data, args.warmup + args.steps + 1,
                           args.warmup + args.steps + 1, device), *args.overrides]
    results = []
    for name in args.configs:
        argv = train_args(name, common, device, out / name)
        cmd = [sys.executable, __file__, "--child", name, "--warmup", str(args.warmup), "--steps", str(args.steps),
               "--trace", str(out / f"{name}.trace.json"), "--", *argv]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True)
        lines = [ln for ln in r.stdout.splitlines() if ln.startswith("PROFILE ")]
        if r.returncode != 0 or not lines:
            print(f"{name}: FAILED (exit {r.returncode})\n{r.stderr[-3000:]}", flush=True)
            continue
        results.append(json.loads(lines[-1][len("PROFILE "):]))
        print(f"{name}: profiled in {time.perf_counter() - t0:.0f} s, trace {out / f'{name}.trace.json'}", flush=True)
    if not results:
        sys.exit(1)
    env = environment(torch.device(device))
    text = (f"# profile_step.py {' '.join(sys.argv[1:])}\n# {args.steps} profiled steps after {args.warmup} "
            f"warm-up; preset {args.preset}, batch {args.batch}, crop {args.crop}\n# "
            + ", ".join(f"{k} {v}" for k, v in env.items()) + "\n" + table(results) + "\n")
    print(text)
    (out / "profile_step.txt").write_text(text)
    (out / "profile_step.json").write_text(json.dumps(results, indent=1))
    if args.table:
        Path(args.table).write_text(text)
    print(f"traces and table in {out}" + (f"; table also in {args.table}" if args.table else ""))


if __name__ == "__main__":
    main()
