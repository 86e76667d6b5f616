"""Shared benchmark harness: timing, the environment of a run, and CSV rows.

Timing: on a GPU, CUDA events around each call with the L2 cache flushed before it (a 256 MiB
write, as triton.testing.do_bench does), so tensors that would fit in L2 are not flattered; on a
CPU, perf_counter. Each measurement reports p50, p20 and p80 in milliseconds over `rep` calls.
Two kinds of GPU time (the `timing` column of the kernel benches):
    call   one Python call between the events: the host's launch work (op dispatch, autograd,
           Triton's launcher) is included whenever it outlasts the GPU work, as in eager code
    graph  the same call captured once in a CUDA graph and replayed: device time alone, what a
           compiled model with CUDA graphs (or any GPU-bound step) pays

Every row carries the device, torch and triton versions, the date, the commit and the host's load
average, so a speed figure in benchmarks/results/ always says where it came from. Ratios are only ever computed
between rows of the same run.

    python benchmarks/harness.py merge gpu_out/group_norm_silu.csv benchmarks/results/group_norm_silu.csv
"""
import argparse
import csv
import datetime
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import repo_imports  # noqa: F401  (before hybengine: works without an install)
import torch

from hybengine.runtime.distributed import device_name

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
ENV_FIELDS = ["device", "torch", "triton", "date", "commit", "load_avg"]


def commit() -> str:
    """HYBENGINE_COMMIT if set (machines that get the tree without .git), else git's short HEAD."""
    if os.environ.get("HYBENGINE_COMMIT"):
        return os.environ["HYBENGINE_COMMIT"]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.strip()
        code = ["kernels", "hybengine", "configs", "benchmarks/*.py"]  # what a measured figure depends on
        dirty = subprocess.run(["git", "status", "--porcelain", "--", *code], cwd=REPO, capture_output=True,
                               text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment(device: torch.device) -> dict[str, str]:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "triton": triton_version,
        "date": datetime.date.today().isoformat(),
        "commit": commit(),
        # 1-minute load average at the start: CPU timings on a busy machine are not comparable
        "load_avg": f"{os.getloadavg()[0]:.1f}",
    }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # host sync: timing boundary


def bench(
    fn: Callable[[], object],
    device: torch.device,
    *,
    warmup: int = 5,
    rep: int = 20,
    grad_to_none: Iterable[torch.Tensor] = (),
) -> tuple[float, float, float]:
    """(p50, p20, p80) milliseconds of fn(); tensors in grad_to_none get .grad = None before each call."""
    grad_to_none = list(grad_to_none)

    def reset():
        for t in grad_to_none:
            t.grad = None

    for _ in range(warmup):
        reset()
        fn()
    synchronize(device)
    times = []
    if device.type == "cuda":
        flush = torch.empty(256 * 2**20, dtype=torch.int8, device=device)
        for _ in range(rep):
            reset()
            flush.zero_()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(rep):
            reset()
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
    q = statistics.quantiles(times, n=10, method="inclusive") if len(times) > 1 else times * 9
    return statistics.median(times), q[1], q[7]


def bench_graph(
    fn: Callable[[], object],
    device: torch.device,
    *,
    rep: int = 20,
    grad_to_none: Iterable[torch.Tensor] = (),
) -> tuple[float, float, float]:
    """(p50, p20, p80) ms of fn() captured in a CUDA graph and replayed: device time, no host launch work.

    fn runs a few times on a side stream first (allocator and autotuning warm-up, as CUDA graph
    capture requires), then once under capture with the tensors of grad_to_none at .grad = None,
    so a captured backward writes fresh gradients on every replay instead of accumulating.
    """
    if device.type != "cuda":
        raise ValueError("graph timing needs a CUDA device")
    grad_to_none = list(grad_to_none)

    def reset():
        for t in grad_to_none:
            t.grad = None

    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            reset()
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    synchronize(device)
    reset()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    synchronize(device)
    flush = torch.empty(256 * 2**20, dtype=torch.int8, device=device)
    times = []
    for _ in range(rep):
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    reset()
    del graph
    q = statistics.quantiles(times, n=10, method="inclusive") if len(times) > 1 else times * 9
    return statistics.median(times), q[1], q[7]


def copy_bandwidth_gbps(device: torch.device, mib: int = 1024) -> float:
    """Measured device-memory copy bandwidth (read + write), the practical roofline of this run."""
    n = (mib * 2**20) // 4 if device.type == "cuda" else (64 * 2**20) // 4
    src = torch.empty(n, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    ms, _, _ = bench(lambda: dst.copy_(src), device, warmup=3, rep=10)
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e9


def time_mode(
    mode: str,
    timing: str,
    *,
    forward: Callable[[], object],
    objective: Callable[[], torch.Tensor],
    grad: torch.Tensor | None,
    device: torch.device,
    rep: int,
    leaves: Iterable[torch.Tensor],
    warmup: int = 5,
) -> tuple[float, float, float]:
    """(p50, p20, p80) ms of one mode of an op: "fwd" times forward(); "bwd" times backward from a
    fixed objective() (retain_graph); "fwd+bwd" both, objective().backward(grad). timing "graph"
    replays a CUDA graph of the call and covers fwd and fwd+bwd only: a backward alone would replay
    the forward's graph from outside the capture."""
    leaves = list(leaves)
    if timing == "graph":
        if mode == "bwd":
            raise ValueError("graph timing covers fwd and fwd+bwd")
        call = forward if mode == "fwd" else (lambda: objective().backward(grad))
        return bench_graph(call, device, rep=rep, grad_to_none=leaves)
    if mode == "fwd":
        return bench(forward, device, warmup=warmup, rep=rep, grad_to_none=leaves)
    if mode == "bwd":
        fixed = objective()
        return bench(lambda: fixed.backward(grad, retain_graph=True), device, warmup=warmup, rep=rep,
                     grad_to_none=leaves)
    return bench(lambda: objective().backward(grad), device, warmup=warmup, rep=rep, grad_to_none=leaves)


def kernel_bench_parser(doc: str, *, shapes_help: str, layouts: list[str], providers: list[str], modes: tuple,
                        dtypes: list[str], csv_path: Path) -> argparse.ArgumentParser:
    """The options the kernel benches share; a bench adds its own before parsing."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="one small shape, few repetitions")
    p.add_argument("--shapes", nargs="*", help=shapes_help)
    p.add_argument("--dtypes", nargs="*", choices=dtypes, default=None)
    p.add_argument("--layouts", nargs="*", choices=["nchw", "nhwc"], default=layouts)
    p.add_argument("--fp32-baseline", type=int, default=1, help="also time the first N shapes in fp32 NCHW")
    p.add_argument("--providers", nargs="*", default=providers)
    p.add_argument("--modes", nargs="*", choices=modes, default=list(modes))
    p.add_argument("--timing", nargs="*", choices=["call", "graph"], default=None,
                   help="GPU: call (host launch work included) and graph (CUDA-graph replay, device time)")
    p.add_argument("--rep", type=int, default=None)
    p.add_argument("--warmup", type=int, default=5, help="untimed calls before the timed ones (call timing)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="start no configuration after this (the first always runs)")
    p.add_argument("--csv", type=Path, default=csv_path)
    p.add_argument("--no-csv", action="store_true")
    return p


def kernel_bench_setup(args: argparse.Namespace, op: str) -> tuple[torch.device, list[str], int, dict, float, str]:
    """Defaults that depend on the device, then the run's environment, printed:
    (device, timings, rep, environment, copy GB/s, the fused op's implementation on this device)."""
    from hybengine.kernels import bodies

    device = torch.device(args.device)
    args.dtypes = args.dtypes or (["bf16"] if device.type == "cuda" else ["fp32"])
    timings = args.timing or (["call", "graph"] if device.type == "cuda" else ["call"])
    rep = args.rep or (5 if args.quick else 30 if device.type == "cuda" else 10)
    torch._dynamo.config.cache_size_limit = 64
    env = environment(device)
    copy_gbps = copy_bandwidth_gbps(device)
    impl = bodies.op_backends()[op][device.type]
    print(f"{env}  fused impl: {impl}  copy bandwidth: {copy_gbps:.0f} GB/s", flush=True)
    return device, timings, rep, env, copy_gbps, impl


def fused_ratios(p50: dict, rows: list[dict], timings: list[str], modes: list[str]) -> str:
    """Summary lines: per (timing, mode), the fused time and every other provider's time over it.

    p50 maps (provider, timing, mode) to milliseconds; rows are the CSV rows of the same run.
    """
    lines = ""
    for timing, mode in [(t, m) for t in timings for m in modes]:
        if ("fused", timing, mode) not in p50:
            continue
        ms = p50[("fused", timing, mode)]
        ratios = ", ".join(f"{p50[k] / ms:.2f}x vs {k[0]}" for k in p50 if k[1:] == (timing, mode) and k[0] != "fused")
        row = next(r for r in rows if (r["provider"], r["timing"], r["mode"]) == ("fused", timing, mode))
        lines += f"\n  {timing:5s} {mode:8s} fused {ms:.3f} ms {row['gbps']} GB/s ({row['roofline']} of copy)  {ratios}"
    return lines


def append_rows(path: Path, rows: list[dict]) -> None:
    """Append rows to a CSV, writing the header first if the file is new; the header must match."""
    if not rows:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(rows[0])
    if path.exists() and path.stat().st_size > 0:
        with path.open(newline="") as f:
            header = next(csv.reader(f))
        if header != fields:
            raise ValueError(f"{path}: header {header} differs from the rows' fields {fields}")
        mode = "a"
    else:
        mode = "w"
    with path.open(mode, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        if mode == "w":
            writer.writeheader()
        writer.writerows(rows)


def merge(src: Path, dst: Path) -> int:
    """Append the rows of CSV `src` (e.g. fetched from a GPU run) to `dst`; returns how many."""
    with Path(src).open(newline="") as f:
        rows = list(csv.DictReader(f))
    append_rows(dst, rows)
    return len(rows)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "merge":
        print(f"appended {merge(Path(sys.argv[2]), Path(sys.argv[3]))} rows to {sys.argv[3]}")
    else:
        sys.exit(__doc__)
