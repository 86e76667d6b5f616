"""Would Winograd 3x3 convolutions get the CPU engine past 1.5x plain? A measured answer (issue 6).

    python benchmarks/probes/winograd_probe.py            # the tiny preset's 3x3 conv shapes, batch 8, fp32

The CPU engine's convolutions already run close to this CPU's fp32 GEMM rate (README, "On the
2-core CPU"), so the one lever left on them is fewer FLOPs. Winograd F(4x4, 3x3) needs 4x fewer
multiplies than a direct 3x3 conv, paid for with transforms that move 2.25x the input and output
through memory and with 36 GEMMs whose inner size is only the channel count. This probe builds
that forward (benchmarks/probes/winograd_probe.cpp: transforms in C++, GEMMs through at::mm, i.e.
oneDNN/MKL), checks it against F.conv2d, and times it against oneDNN's direct convolution on the
U-Net's channels-last shapes, alternating the two, `--repeats` medians of `--rep` calls each.
It also times the three parts alone, writing into buffers made beforehand (workspaces kept
between calls, which the whole forward above does not do: it allocates V, M and y as a plain op
would), and gives a memory floor for the transforms: their bytes (read x, write V; read M, write
y) at the copy bandwidth measured in this run for buffers of V's and M's sizes, plus the GEMMs as
timed. The last lines sum each over a tiny training step's mix of these convs (`count` each).
Only the forward is probed: the data gradient is the same computation with the flipped kernel,
and the weight gradient's GEMMs have the same inner sizes.

The extension is compiled on first use with torch.utils.cpp_extension (about 30 s, ninja and a
C++ compiler; nothing is downloaded). hybengine itself does not use it. Rows go to
benchmarks/results/winograd_probe.csv.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: harness, repo_imports
from harness import RESULTS, append_rows, bench, environment  # noqa: E402

HERE = Path(__file__).resolve().parent
# (name, C_in, C_out, H=W, count) of the tiny preset's 3x3 stride-1 convs at batch 8 and 64x64
# crops, count = how many of them one forward has; "ragged" (count 0) only checks the partial
# channel blocks and tiles (C not a multiple of 16, H not of 4) and stays out of the sums
TINY_SHAPES = [("enc0", 32, 32, 64, 4), ("enc1.conv0", 32, 64, 32, 1), ("mid", 64, 64, 32, 7),
               ("dec1.b0", 128, 64, 32, 1), ("dec1.b1", 96, 64, 32, 1), ("dec0.b0", 96, 32, 64, 1),
               ("dec0.b1", 64, 32, 64, 1), ("ragged", 40, 24, 30, 0)]
G = torch.tensor([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], dtype=torch.float64)
TOLERANCE = 1e-4  # largest |winograd - direct| / largest |direct|; F(4x4, 3x3) in fp32 gives ~1e-5


def build():
    from torch.utils.cpp_extension import load

    flags = ["-O3", "-fopenmp"]
    if torch.backends.cpu.get_cpu_capability() == "AVX512":
        flags += ["-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mfma"]
    elif torch.backends.cpu.get_cpu_capability() == "AVX2":
        flags += ["-mavx2", "-mfma"]
    build_dir = Path(tempfile.gettempdir()) / "hybengine_winograd_probe"
    build_dir.mkdir(exist_ok=True)
    lock = build_dir / "lock"  # cpp_extension's; a killed build leaves it, and the next load waits forever
    if lock.exists() and time.time() - lock.stat().st_mtime > 600:
        raise SystemExit(f"{lock} is left from a build that was interrupted over 10 minutes ago; "
                         "remove it and run again")
    return load("hybengine_winograd_probe", [str(HERE / "winograd_probe.cpp")], extra_cflags=flags,
                build_directory=str(build_dir))


def kernel_transform(weight: torch.Tensor) -> torch.Tensor:
    """U (36, C_in, C_out) = G g G^T for every (out, in) kernel g, in float64, then fp32."""
    u = torch.einsum("ij,ocjl,ml->imco", G, weight.double(), G)
    return u.reshape(36, weight.shape[1], weight.shape[0]).float().contiguous()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=8)
    p.add_argument("--rep", type=int, default=5)
    p.add_argument("--csv", default=str(RESULTS / "winograd_probe.csv"))
    args = p.parse_args()
    ext = build()
    env = environment(torch.device("cpu"))
    cpu = torch.device("cpu")
    gen = torch.Generator().manual_seed(0)
    rows, mix = [], {k: 0.0 for k in ("direct", "winograd", "parts", "gemms", "floor")}
    for name, cin, cout, hw, count in TINY_SHAPES:
        x = torch.randn(args.batch, cin, hw, hw, generator=gen).contiguous(memory_format=torch.channels_last)
        weight = (torch.randn(cout, cin, 3, 3, generator=gen) / (3 * cin**0.5)).contiguous(
            memory_format=torch.channels_last)  # as the model's weights after .to(channels_last)
        bias = torch.randn(cout, generator=gen)
        u = kernel_transform(weight)
        direct = F.conv2d(x, weight, bias, padding=1)
        err = ((ext.forward(x, u, bias) - direct).abs().max() / direct.abs().max()).item()
        if err > TOLERANCE:
            raise SystemExit(f"{name}: Winograd output is off by {err:.1e} (relative), over {TOLERANCE}: not timed")
        v = ext.input_transform(x)
        m = ext.gemms(v, u)
        y = torch.empty_like(direct)
        copies = {"v": (torch.empty_like(v), torch.randn_like(v)), "m": (torch.empty_like(m), torch.randn_like(m))}
        calls = {"direct": partial(F.conv2d, x, weight, bias, padding=1),
                 "winograd": partial(ext.forward, x, u, bias),
                 "input_transform": partial(ext.input_transform, x, out=v),  # workspaces made once
                 "gemms": partial(ext.gemms, v, u, out=m),
                 "output_transform": partial(ext.output_transform, m, bias, y, args.batch, hw, hw),
                 "copy_v": partial(torch.Tensor.copy_, *copies["v"]),
                 "copy_m": partial(torch.Tensor.copy_, *copies["m"])}
        times: dict[str, list[float]] = {k: [] for k in calls}
        for _ in range(args.repeats):  # alternating, so the host's slow spells hit all alike
            for key, fn in calls.items():
                times[key].append(bench(fn, cpu, warmup=2, rep=args.rep)[0])
        ratios = [d / w for d, w in zip(times["direct"], times["winograd"], strict=True)]
        med = {k: statistics.median(t) for k, t in times.items()}
        parts = med["input_transform"] + med["gemms"] + med["output_transform"]
        # copy bandwidth (read + write) for buffers of V's and of M's size, then the transforms' bytes at it
        bw_v, bw_m = (2 * t.numel() * 4 / (med[k] * 1e-3) for t, k in ((v, "copy_v"), (m, "copy_m")))
        floor = 1e3 * ((x.numel() + v.numel()) * 4 / bw_v + (m.numel() + direct.numel()) * 4 / bw_m) + med["gemms"]
        for key, value in (("direct", med["direct"]), ("winograd", med["winograd"]), ("parts", parts),
                           ("gemms", med["gemms"]), ("floor", floor)):
            mix[key] += count * value
        gflop = 2 * args.batch * hw * hw * cin * cout * 9 / 1e9
        row = {"bench": "winograd_probe", "conv": name, "shape": f"{args.batch}x{cin}x{hw}x{hw}->{cout}",
               "count": count, "layout": "nhwc", "dtype": "fp32",
               **{f"{k}_ms": round(med[k], 3) for k in ("direct", "winograd", "input_transform", "gemms",
                                                       "output_transform")},
               "parts_ms": round(parts, 3), "floor_ms": round(floor, 3),
               "copy_gbps": f"{bw_v / 1e9:.1f}/{bw_m / 1e9:.1f}",
               "speedup": round(statistics.median(ratios), 3), "speedup_range": f"{min(ratios):.3f}-{max(ratios):.3f}",
               "speedup_parts": round(med["direct"] / parts, 3),
               "speedup_gemms": round(med["direct"] / med["gemms"], 3),
               "speedup_floor": round(med["direct"] / floor, 3),
               "direct_gflops": round(gflop / med["direct"] * 1e3, 1), "max_err": f"{err:.1e}", **env}
        rows.append(row)
        print(f"{name:11s} {row['shape']:>18s} x{count}: direct {med['direct']:6.2f} ms ({row['direct_gflops']:5.1f} "
              f"GFLOP/s); winograd {med['winograd']:6.2f} ms = x{row['speedup']} ({row['speedup_range']}); parts: "
              f"input {med['input_transform']:5.2f} + GEMMs {med['gemms']:5.2f} + output "
              f"{med['output_transform']:5.2f} = {parts:6.2f} ms (x{row['speedup_parts']}); floor {floor:6.2f} ms "
              f"(x{row['speedup_floor']}, copy {row['copy_gbps']} GB/s); err {err:.1e}", flush=True)
    print(f"a tiny step's forward mix (ms): direct {mix['direct']:.1f}; winograd {mix['winograd']:.1f} "
          f"(x{mix['direct'] / mix['winograd']:.3f}); parts {mix['parts']:.1f} (x{mix['direct'] / mix['parts']:.3f}); "
          f"GEMMs alone {mix['gemms']:.1f} (x{mix['direct'] / mix['gemms']:.3f}); floor {mix['floor']:.1f} "
          f"(x{mix['direct'] / mix['floor']:.3f})")
    append_rows(Path(args.csv), rows)
    print(f"{len(rows)} rows appended to {args.csv}")


if __name__ == "__main__":
    main()
