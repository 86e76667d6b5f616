"""Two builds of libhybengine_native against each other: the fused GroupNorm-SiLU, fwd+bwd, on CPU.

    cp kernels/native/libhybengine_native.so /tmp/before.so     # the build to compare against
    # ... change kernels/native/*.cpp, then: pip install --no-deps --no-build-isolation -e .
    python benchmarks/probes/ab_native_lib.py --before /tmp/before.so  # --after: the installed build

Both builds register the same op names, so one process can load only one of them
(HYBENGINE_NATIVE_LIB picks it). This script therefore alternates child processes, before and
after, `--pairs` times; each child times `--rep` fwd+bwd calls per shape (same inputs, seeded) and
prints their medians. The speed-up of a pair is before / after, so a slow spell of this shared
host hits both sides of a pair alike; rows give the median over pairs and the lowest and highest.
Each child also prints a SHA-256 of the bytes of its outputs and gradients; the rows record
whether every child of both builds gave the same bytes (the results bitwise the same).
Rows go to benchmarks/results/native_ab.csv.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: harness, repo_imports
import repo_imports  # noqa: E402,F401  (before hybengine: works without an install)
from harness import RESULTS, append_rows, environment  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
INSTALLED = REPO / "kernels" / "native" / "libhybengine_native.so"
SHAPES = ["8,32,64,64", "8,64,32,32", "8,96,64,64", "8,128,32,32"]  # the tiny preset's channels-last calls


def _inputs(spec: str, layout: str):
    """Seeded inputs of one shape: x, [weight, bias], [scale, shift], dy."""
    n, c, h, w = (int(v) for v in spec.split(","))
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, h, w, generator=gen).contiguous(memory_format=fmt).requires_grad_()
    params = [torch.randn(c, generator=gen).requires_grad_() for _ in range(2)]
    mod = [torch.randn(n, c, generator=gen).requires_grad_() for _ in range(2)]
    dy = torch.randn(n, c, h, w, generator=gen).contiguous(memory_format=fmt)
    return x, params, mod, dy


def _fwd_bwd(x, params, mod, dy, groups: int) -> torch.Tensor:
    from hybengine.kernels import group_norm_silu

    for t in (x, *params, *mod):
        t.grad = None
    y = group_norm_silu(x, *params, groups, 1e-5, *mod, body="native")
    y.backward(dy)
    return y


def child(shapes: list[str], layout: str, groups: int, rep: int) -> None:
    from hybengine.kernels import bodies, native

    lib = bodies.environment().native_lib  # the build this child was given (HYBENGINE_NATIVE_LIB)
    if not native.load(lib):
        raise SystemExit(f"native library not loaded: {native.status(lib)}")
    result = {"lib": native.status(lib), "ms": {}, "checksum": {}}
    for spec in shapes:
        x, params, mod, dy = _inputs(spec, layout)
        y = _fwd_bwd(x, params, mod, dy, groups)
        digest = hashlib.sha256()
        for t in (y, *(v.grad for v in (x, *params, *mod))):
            digest.update(t.detach().contiguous().numpy().tobytes())  # the bytes, whatever the layout
        result["checksum"][spec] = digest.hexdigest()
        for _ in range(3):
            _fwd_bwd(x, params, mod, dy, groups)
        times = []
        for _ in range(rep):
            t0 = time.perf_counter()
            _fwd_bwd(x, params, mod, dy, groups)
            times.append(1e3 * (time.perf_counter() - t0))
        result["ms"][spec] = statistics.median(times)
    print("AB " + json.dumps(result), flush=True)


def run_child(lib: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", "--layout", args.layout, "--groups", str(args.groups),
           "--rep", str(args.rep), "--shapes", *args.shapes]
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "HYBENGINE_NATIVE_LIB": str(lib)},
                          capture_output=True, text=True, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("AB ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child with {lib} failed (exit {proc.returncode}):\n"
                           f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return json.loads(lines[-1][3:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", type=Path, help="the build to compare against (a copy of the .so)")
    p.add_argument("--after", type=Path, default=INSTALLED, help="default: the installed build")
    p.add_argument("--label", default="", help="what changed, for the rows")
    p.add_argument("--shapes", nargs="+", default=SHAPES)
    p.add_argument("--layout", choices=["nhwc", "nchw"], default="nhwc")
    p.add_argument("--groups", type=int, default=8)
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--rep", type=int, default=30)
    p.add_argument("--csv", default=str(RESULTS / "native_ab.csv"))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.shapes, args.layout, args.groups, args.rep)
        return
    if args.before is None:
        p.error("--before is required (a copy of the library built before the change)")
    for lib in (args.before, args.after):
        if not lib.is_file():
            p.error(f"{lib}: no such library file")
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    for i in range(args.pairs):
        order = ("before", "after") if i % 2 == 0 else ("after", "before")  # neither always goes first
        for side in order:
            runs[side].append(run_child(args.before if side == "before" else args.after, args))
        if i == 0:
            print("before: " + runs["before"][0]["lib"] + "\nafter:  " + runs["after"][0]["lib"], flush=True)
        print(f"pair {i}: " + ", ".join(f"{s} x{runs['before'][-1]['ms'][s] / runs['after'][-1]['ms'][s]:.3f}"
                                        for s in args.shapes), flush=True)
    env = environment(torch.device("cpu"))
    rows = []
    for spec in args.shapes:
        ratios = [b["ms"][spec] / a["ms"][spec] for b, a in zip(runs["before"], runs["after"], strict=True)]
        same = len({r["checksum"][spec] for side in runs.values() for r in side}) == 1
        row = {"bench": "native_ab", "op": "group_norm_silu", "mode": "fwd+bwd", "shape": spec.replace(",", "x"),
               "layout": args.layout, "dtype": "fp32", "label": args.label, "pairs": args.pairs,
               "before_ms": round(statistics.median(b["ms"][spec] for b in runs["before"]), 3),
               "after_ms": round(statistics.median(a["ms"][spec] for a in runs["after"]), 3),
               "speedup": round(statistics.median(ratios), 3), "speedup_range": f"{min(ratios):.3f}-{max(ratios):.3f}",
               "same_results": same, **env}
        rows.append(row)
        print(f"{row['shape']:>12s} {args.layout}: before {row['before_ms']:7.3f} ms, after {row['after_ms']:7.3f} ms, "
              f"x{row['speedup']} ({row['speedup_range']}), results {'bitwise the same' if same else 'DIFFER'}")
    append_rows(Path(args.csv), rows)
    print(f"{len(rows)} rows appended to {args.csv}")


if __name__ == "__main__":
    main()
