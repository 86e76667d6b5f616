"""Counted memory traffic of GroupNorm-SiLU over the U-Net's real call list (CPU, Triton interpreter).

For every distinct call of `real_calls` (benchmarks/call_list.py) (default: base preset, batch 32, 128x128,
bf16 as cuda.yaml trains) and each layout and kernel design, runs the forward and the backward once
under `kernels.traffic.count` with the launch plan the GPU would use at the real batch (132 SMs),
and reports bytes per element in element-sizes: raw (every global load/store) and DRAM (the
counter's L2 model), the big tensors (x, y, dy, dx) apart from the small buffers (statistics,
partials, parameters, counters).

Scaling: the interpreter runs ~2 M elements/s, so each call runs at `--run-batch` samples (default 1)
instead of 32, with the GPU plan of the real batch forced. Every design's plan is per sample (a
program never spans samples), so the bytes per element do not depend on the batch; `--check-scaling`
runs the first call at 1 and 2 samples and prints both. Reuse across launches is scaled to the
real batch by the counter (`batch_scale`). bf16 is broken under the interpreter: fp16 stands in
for it (same 2-byte elements, so the same bytes).

    python benchmarks/traffic_group_norm_silu.py --out benchmarks/results/traffic_group_norm_silu.csv
"""
from __future__ import annotations

import argparse
import csv
import datetime
import os
import subprocess
import time
from collections import Counter

os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402
from call_list import GNCall, real_calls  # noqa: E402

from hybengine.kernels import traffic  # noqa: E402
from hybengine.kernels.group_norm_silu import design as gn_design  # noqa: E402
from hybengine.kernels.group_norm_silu import rows, slab  # noqa: E402
from hybengine.kernels.launch import gpu_split_plan  # noqa: E402


def _design_groups(call: GNCall, real_n: int, sms: int):
    _, chunk = gpu_split_plan(real_n * call.groups, call.h * call.w, call.c // call.groups, sms)
    fwd = lambda x, w, b, s, t: gn_design.group_norm_silu_fwd_triton(x, w, b, s, t, call.groups, 1e-5,
                                                                      hw_per_split=chunk)
    bwd = lambda dy, x, w, b, s, t, m, r: gn_design.group_norm_silu_bwd_triton(dy, x, w, b, s, t, m, r, call.groups,
                                                                              1e-5, hw_per_split=chunk)
    return fwd, bwd


def _design_rows(call: GNCall, real_n: int, sms: int):
    _, chunk = gpu_split_plan(real_n, call.h * call.w, call.c, sms)
    fwd = lambda x, w, b, s, t: rows.group_norm_silu_fwd_rows(x, w, b, s, t, call.groups, 1e-5, p_split=chunk)
    bwd = lambda dy, x, w, b, s, t, m, r: rows.group_norm_silu_bwd_rows(dy, x, w, b, s, t, m, r, call.groups, 1e-5,
                                                                        p_split=chunk)
    return fwd, bwd


def _design_slab(call: GNCall, real_n: int, sms: int):
    # the GPU's units and chunks (so its bytes), with the CPU's larger tiles (fewer interpreter steps)
    cfg = slab.slab_config(call.c, call.h * call.w, call.groups, call.channels_last, True, tile=8192)
    cfg["NUM_STAGES"] = 1
    fwd = lambda x, w, b, s, t: slab.group_norm_silu_fwd_slab(x, w, b, s, t, call.groups, 1e-5, sms=sms, config=cfg)
    bwd = lambda dy, x, w, b, s, t, m, r: slab.group_norm_silu_bwd_slab(dy, x, w, b, s, t, m, r, call.groups, 1e-5,
                                                                        sms=sms, config=cfg)
    return fwd, bwd


DESIGNS = {"groups": _design_groups, "rows": _design_rows, "slab": _design_slab}


def count_call(call: GNCall, design: str, real_n: int, sms: int, l2_budget: int) -> dict:
    """Traffic of one call's forward and backward at call.n samples with the plan of real_n."""
    dtype = torch.float16 if call.dtype == "bfloat16" else getattr(torch, call.dtype)
    g = torch.Generator().manual_seed(0)
    shape = (call.n, call.c, call.h, call.w)
    mf = torch.channels_last if call.channels_last else torch.contiguous_format
    x = torch.randn(shape, generator=g).to(dtype).contiguous(memory_format=mf)
    dy = torch.randn(shape, generator=g).to(dtype).contiguous(memory_format=mf)
    w, b = 1 + 0.1 * torch.randn(call.c, generator=g), 0.1 * torch.randn(call.c, generator=g)
    s = t = None
    if call.modulated:
        s, t = (0.1 * torch.randn(call.n, call.c, generator=g)).to(dtype), (0.1 * torch.randn(call.n, call.c)).to(dtype)
    fwd, bwd = DESIGNS[design](call, real_n, sms)
    scale = real_n / call.n
    with traffic.count(l2_budget, scale, x.numel()) as tf:
        _, mean, rstd = fwd(x, w, b, s, t)
    with traffic.count(l2_budget, scale, x.numel()) as tb:
        bwd(dy, x, w, b, s, t, mean, rstd)
    unit = x.numel() * x.element_size()
    row = {"design": design, "layout": call.layout, "n_run": call.n, "c": call.c, "h": call.h, "w": call.w,
           "groups": call.groups, "dtype": call.dtype, "modulated": int(call.modulated)}
    for tag, tr in (("fwd", tf), ("bwd", tb)):
        tot = tr.totals()
        row[f"{tag}_launches"] = " ".join(f"{lz.name}{list(lz.grid[:2])}" for lz in tr.launches)
        row[f"{tag}_raw"] = (tot["load"] + tot["store"]) / unit
        row[f"{tag}_dram"] = (tot["dram_load"] + tot["dram_store"]) / unit
        row[f"{tag}_raw_small"] = (tot["load_small"] + tot["store_small"]) / unit
        row[f"{tag}_dram_small"] = tot["dram_small"] / unit
    return row


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="base")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--run-batch", type=int, default=1, help="samples per call under the interpreter")
    p.add_argument("--designs", default="groups,rows,slab")
    p.add_argument("--layouts", default="channels_last,nchw")
    p.add_argument("--sms", type=int, default=132, help="SMs of the GPU whose plan is replayed (H100, H200: 132)")
    p.add_argument("--l2-budget-mb", type=float, default=traffic.L2_BUDGET / 2**20)
    p.add_argument("--max-calls", type=int, default=0, help="only the first K distinct calls (smoke runs)")
    p.add_argument("--skip", nargs="*", default=[], help="shapes CxHxW to leave out (counted by an earlier run)")
    p.add_argument("--smallest-first", action="store_true", help="count the cheap shapes first")
    p.add_argument("--check-scaling", action="store_true")
    p.add_argument("--out", default="")
    a = p.parse_args(argv)
    calls = real_calls(a.preset, a.batch, a.crop, torch.bfloat16, True)
    # one row per shape: modulation only adds (N, C) reads, which land in the small column
    by_shape: Counter = Counter()
    mod: dict = {}
    for c in calls:
        key = (c.c, c.h, c.w, c.groups, c.dtype)
        by_shape[key] += 1
        mod[key] = mod.get(key, False) or c.modulated
    shapes = sorted(by_shape, key=lambda k: -k[0] * k[1] * k[2] * by_shape[k])
    if a.max_calls:
        shapes = shapes[:a.max_calls]
    shapes = [k for k in shapes if f"{k[0]}x{k[1]}x{k[2]}" not in a.skip]
    if a.smallest_first:
        shapes.sort(key=lambda k: k[0] * k[1] * k[2])
    budget = int(a.l2_budget_mb * 2**20)
    print(f"{len(calls)} calls, {len(by_shape)} shapes; run batch {a.run_batch} with the plans of batch {a.batch}, "
          f"{a.sms} SMs; L2 budget {a.l2_budget_mb} MB", flush=True)
    if a.check_scaling:
        c, h, w, gr, dt = shapes[-1]
        for design in a.designs.split(","):
            for n in (1, 2):
                r = count_call(GNCall(n, c, h, w, gr, True, dt, mod[shapes[-1]]), design, a.batch, a.sms, budget)
                print(f"scaling {design} C={c} {h}x{w} run batch {n}: fwd raw {r['fwd_raw']:.4f} dram "
                      f"{r['fwd_dram']:.4f} small {r['fwd_raw_small']:.4f}; bwd raw {r['bwd_raw']:.4f} dram "
                      f"{r['bwd_dram']:.4f} small {r['bwd_raw_small']:.4f}", flush=True)
    append = _writer(a.out, a.batch, a.sms, a.l2_budget_mb)
    for layout in a.layouts.split(","):
        for design in a.designs.split(","):
            if design == "rows" and layout != "channels_last":
                continue
            t0, acc = time.time(), Counter()
            for key in shapes:
                c, h, w, gr, dt = key
                call = GNCall(a.run_batch, c, h, w, gr, layout == "channels_last", dt, mod[key])
                r = count_call(call, design, a.batch, a.sms, budget)
                r["calls"] = by_shape[key]
                append(r)
                weight = by_shape[key] * c * h * w
                for k in ("fwd_raw", "fwd_dram", "bwd_raw", "bwd_dram", "fwd_raw_small", "bwd_raw_small",
                          "fwd_dram_small", "bwd_dram_small"):
                    acc[k] += weight * r[k]
                acc["w"] += weight
                print(f"{design:6s} {layout:13s} {by_shape[key]:2d}x C={c:4d} {h:3d}x{w:<3d}  fwd raw "
                      f"{r['fwd_raw']:.3f} dram {r['fwd_dram']:.3f} (+{r['fwd_dram_small']:.3f})  bwd raw "
                      f"{r['bwd_raw']:.3f} dram {r['bwd_dram']:.3f} (+{r['bwd_dram_small']:.3f})", flush=True)
            f = {k: acc[k] / acc["w"] for k in acc if k != "w"}
            print(f"SUM {design} {layout} over the real list: fwd+bwd DRAM {f['fwd_dram'] + f['bwd_dram']:.3f} "
                  f"element-sizes/element (fwd {f['fwd_dram']:.3f}, bwd {f['bwd_dram']:.3f}) + small "
                  f"{f['fwd_dram_small'] + f['bwd_dram_small']:.3f}; raw {f['fwd_raw'] + f['bwd_raw']:.3f} + small "
                  f"{f['fwd_raw_small'] + f['bwd_raw_small']:.3f}  [{time.time() - t0:.0f} s]", flush=True)


def _writer(path: str, batch: int, sms: int, budget_mb: float):
    """append(row): rows go to the CSV as they come (a cut-short run keeps what it counted)."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    stamp = {"date": datetime.date.today().isoformat(), "commit": commit, "machine": "cpu-interpreter",
             "torch": torch.__version__, "l2_budget_mb": budget_mb, "sms": sms, "batch": batch}
    state = {}

    def append(row: dict) -> None:
        if not path:
            return
        new = "w" not in state
        with open(path, "w" if new else "a", newline="") as fh:
            wr = csv.DictWriter(fh, fieldnames=list(stamp) + list(row))
            if new:
                wr.writeheader()
                state["w"] = True
            wr.writerow({**stamp, **row})

    return append


if __name__ == "__main__":
    main()
