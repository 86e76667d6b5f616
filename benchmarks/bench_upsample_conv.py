"""The U-Net's upsample + 3x3 conv: the sub-pixel form (kernels/upsample_conv.py) against the reference.

    python benchmarks/bench_upsample_conv.py                 # CPU: the tiny and small presets' shapes
    python benchmarks/bench_upsample_conv.py --device cuda   # GPU: the base preset's, 128x128, batch 32

One call = forward and backward (x, weight and bias gradients) of conv3x3(nearest-2x(x)), shapes
being the Upsample stages' inputs (N, C, H, W) with C output channels. The two forms are timed
alternately, `--repeats` times `--rep` calls each (harness.bench: perf_counter on CPU, CUDA
events with the L2 flushed on a GPU), and `speedup` is the median of the per-repeat ratios
reference / sub-pixel, its range the lowest and highest. `max_err` is the largest difference of
output and gradients to the reference, relative to the reference's largest magnitude.
Rows go to benchmarks/results/upsample_conv.csv.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import repo_imports  # noqa: E402,F401  (before hybengine: works without an install)
from harness import RESULTS, append_rows, bench, environment  # noqa: E402

from hybengine.kernels.upsample_conv import upsample_conv_reference, upsample_conv_subpixel  # noqa: E402

CPU_SHAPES = ["8,64,32,32", "8,128,16,16"]  # tiny at 64x64 (its one Upsample); small's deeper one
GPU_SHAPES = ["32,512,16,16", "32,256,32,32", "32,256,64,64"]  # base at 128x128, batch 32
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def make_inputs(shape, dtype, channels_last, device, seed=0):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    n, c, h, w = shape
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(n, c, h, w, generator=gen).to(device, dtype).contiguous(memory_format=fmt).requires_grad_()
    weight = (torch.randn(c, c, 3, 3, generator=gen) / (3 * c**0.5)).to(device, dtype)
    weight = weight.contiguous(memory_format=fmt).requires_grad_()  # as the model's, after .to(channels_last)
    bias = torch.randn(c, generator=gen).to(device, dtype).requires_grad_()
    dy = torch.randn(n, c, 2 * h, 2 * w, generator=gen).to(device, dtype).contiguous(memory_format=fmt)
    return x, weight, bias, dy


def step(fn, x, weight, bias, dy):
    fn(x, weight, bias).backward(dy)


def max_rel_err(x, weight, bias, dy) -> float:
    outs = {}
    for name, fn in (("reference", upsample_conv_reference), ("subpixel", upsample_conv_subpixel)):
        for t in (x, weight, bias):
            t.grad = None
        y = fn(x, weight, bias)
        y.backward(dy)
        outs[name] = [y.detach().float(), *(t.grad.float() for t in (x, weight, bias))]
    return max(((a - r).abs().max() / r.abs().max().clamp_min(1e-30)).item()
               for a, r in zip(outs["subpixel"], outs["reference"], strict=True))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--shapes", nargs="+", help="N,C,H,W of the upsample's input")
    p.add_argument("--dtype", choices=list(DTYPES), default=None, help="default: fp32 on CPU, bf16 on CUDA")
    p.add_argument("--layouts", nargs="+", choices=["nhwc", "nchw"], default=["nhwc", "nchw"])
    p.add_argument("--repeats", type=int, default=8)
    p.add_argument("--rep", type=int, default=5)
    p.add_argument("--csv", default=str(RESULTS / "upsample_conv.csv"))
    args = p.parse_args()
    device = torch.device(args.device)
    dtype_name = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    env = environment(device)
    rows = []
    for spec in args.shapes or (GPU_SHAPES if device.type == "cuda" else CPU_SHAPES):
        shape = tuple(int(v) for v in spec.split(","))
        for layout in args.layouts:
            x, weight, bias, dy = make_inputs(shape, DTYPES[dtype_name], layout == "nhwc", device)
            err = max_rel_err(x, weight, bias, dy)
            times: dict[str, list[float]] = {"reference": [], "subpixel": []}
            for _ in range(args.repeats):
                for name, fn in (("reference", upsample_conv_reference), ("subpixel", upsample_conv_subpixel)):
                    ms, _, _ = bench(partial(step, fn, x, weight, bias, dy), device, warmup=2, rep=args.rep,
                                     grad_to_none=(x, weight, bias))
                    times[name].append(ms)
            ratios = [r / s for r, s in zip(times["reference"], times["subpixel"], strict=True)]
            row = {"bench": "upsample_conv", "shape": "x".join(map(str, shape)), "dtype": dtype_name, "layout": layout,
                   "reference_ms": round(statistics.median(times["reference"]), 3),
                   "subpixel_ms": round(statistics.median(times["subpixel"]), 3),
                   "speedup": round(statistics.median(ratios), 3),
                   "speedup_range": f"{min(ratios):.3f}-{max(ratios):.3f}", "max_err": f"{err:.1e}", **env}
            rows.append(row)
            print(f"{row['shape']:>14s} {dtype_name} {layout}: reference {row['reference_ms']:8.3f} ms, sub-pixel "
                  f"{row['subpixel_ms']:8.3f} ms, x{row['speedup']} ({row['speedup_range']}), max rel err {err:.1e}",
                  flush=True)
    append_rows(Path(args.csv), rows)
    print(f"{len(rows)} rows appended to {args.csv}")


if __name__ == "__main__":
    main()
