"""GroupNorm-SiLU with modulation: the fused op against its baselines, fwd / bwd / fwd+bwd.

Providers (same inputs, same run):
    fused      hybengine.kernels.group_norm_silu (Triton on a GPU; on a CPU whatever
               op_backends() says, recorded in the `impl` column)
    reference  group_norm_silu_reference in eager mode (computes in fp32 whatever the input dtype)
    eager      F.group_norm -> modulation -> F.silu in the input dtype (the unfused baseline as a
               user writes it)
    compile    torch.compile(group_norm_silu_reference), static shapes
    native     the fused op with its CPU body forced to the C++ kernels of kernels/native (CPU runs
               where the library was built; `fused` is then native too unless forced elsewhere)
    rows       the fused op with design="rows": the channels-last kernels of
               kernels/group_norm_silu/rows.py (nhwc rows only; GPU, or the interpreter); `fused`
               keeps the default design, "groups"
    groups     the fused op with design="groups" (kernels/group_norm_silu/groups.py), whatever the default
    slab       the fused op with design="slab": the persistent kernels of kernels/group_norm_silu/slab.py
               (both layouts)
    groups-pre8a0dcf0
               the group kernels before commit 8a0dcf0 (two-pass tile statistics, per-tile backward
               sums; benchmarks/probes/gn_groups_pre8a0dcf0.py): the A/B of that commit against `groups`
    apex       apex.contrib.group_norm.GroupNorm(act="silu") where apex imports (NHWC, fp16/bf16,
               no modulation: its rows say modulated=False)

Bytes-moved model, per element of x with E its element size (weights, modulation and statistics
are O(N*C) and ignored):
    fwd      read x, write y               2 E
    bwd      read x and dy, write dx       3 E
    fwd+bwd                                5 E   (torch.compile's schedule moves about 8, eager 13)
GB/s = model bytes / p50 time; `roofline` is that over the copy bandwidth measured in the same run.

Before timing, each configuration measures the max error of y and dx against a float64 reference,
for fused (`max_err_*`) and for the reference run in the input dtype (`ref_err_*`). Rows are
appended, one configuration at a time, to --csv (default benchmarks/results/group_norm_silu.csv).

    python benchmarks/bench_group_norm_silu.py                 # GPU: the U-Net's real call list
    python benchmarks/bench_group_norm_silu.py --quick         # CPU: one small shape

The GPU default is the real call list (benchmarks/call_list.py: base preset, batch 32, 128x128, the
configured model.groups): one configuration per distinct (C, H, W, groups) with its number of calls
per forward, and at the end, per provider, the sum over the list of calls x time ("per step") and
its fraction of the roofline (5E bytes of every call over the measured copy bandwidth).
"""
import gc
import time
from functools import partial

import repo_imports  # noqa: F401  (before hybengine: works without an install)
import torch
import torch.nn.functional as F
from harness import RESULTS, append_rows, fused_ratios, kernel_bench_parser, kernel_bench_setup, time_mode

from hybengine.kernels import bodies, group_norm_silu, group_norm_silu_reference, native

# the U-Net shapes, most telling first (a time budget may cut the tail)
GPU_SHAPES = [(64, 256, 64, 64), (16, 128, 128, 128), (8, 128, 256, 256), (64, 512, 32, 32), (1, 64, 64, 64)]
CPU_SHAPES = [(8, 64, 32, 32), (2, 128, 32, 32)]
QUICK_SHAPES = [(4, 64, 16, 16)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MODES = ("fwd", "bwd", "fwd+bwd")
ELEMENT_SIZES = {"fwd": 2, "bwd": 3, "fwd+bwd": 5}


def eager_composition(x, weight, bias, groups, eps, scale, shift):
    h = F.group_norm(x, groups, weight, bias, eps)
    return F.silu(h * (1 + scale[:, :, None, None]) + shift[:, :, None, None])


DESIGN_PROVIDERS = ("groups", "rows", "slab")  # the fused op with that Triton design, passed as its argument
# the columns of a --real row before the environment's (a failed provider's row leaves the timings empty)
ROW_FIELDS = ["bench", "provider", "impl", "mode", "timing", "shape", "groups", "calls", "dtype", "layout", "modulated",
              "ms_p50", "ms_p20", "ms_p80", "gbps", "roofline", "bytes_model", "max_err_y", "max_err_dx", "ref_err_y",
              "ref_err_dx", "status"]


def make_provider(name: str, groups: int, eps: float, channels: int, dtype: torch.dtype, device, layout: str):
    """fn(x, weight, bias, scale, shift) -> y, or None where the provider cannot run this case."""
    triton_runs = device.type == "cuda" or bodies.INTERPRET
    if name in DESIGN_PROVIDERS:
        if not triton_runs or (name == "rows" and layout != "nhwc"):
            return None
        return lambda x, w, b, s, t: group_norm_silu(x, w, b, groups, eps, s, t, design=name)
    if name == "groups-pre8a0dcf0":
        if not triton_runs:
            return None
        from probes.gn_groups_pre8a0dcf0 import group_norm_silu_pre8a0dcf0

        return lambda x, w, b, s, t: group_norm_silu_pre8a0dcf0(x, w, b, groups, eps, s, t)
    if name == "fused":
        return lambda x, w, b, s, t: group_norm_silu(x, w, b, groups, eps, s, t)  # the default body (op_backends)
    if name == "native":
        if device.type != "cpu" or not native.available():
            return None
        return lambda x, w, b, s, t: group_norm_silu(x, w, b, groups, eps, s, t, body="native")
    if name == "reference":
        return lambda x, w, b, s, t: group_norm_silu_reference(x, w, b, groups, eps, s, t)
    if name == "eager":
        return lambda x, w, b, s, t: eager_composition(x, w, b, groups, eps, s, t)
    if name == "compile":
        compiled = torch.compile(group_norm_silu_reference, dynamic=False)
        return lambda x, w, b, s, t: compiled(x, w, b, groups, eps, s, t)
    if name == "apex":
        try:
            from apex.contrib.group_norm import GroupNorm as ApexGroupNorm
        except Exception:  # apex is optional and only ever built on CUDA machines
            return None
        if device.type != "cuda" or dtype == torch.float32:
            return None
        module = ApexGroupNorm(groups, channels, eps, affine=True, act="silu").to(device, dtype)
        return lambda x, w, b, s, t: module(x)
    raise ValueError(f"unknown provider {name}")


def inputs(shape, dtype, channels_last, device, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    n, c, h, w = shape
    x = torch.randn(shape, generator=g, device=device, dtype=dtype).mul_(0.5).sub_(2.3)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = 1 + 0.1 * torch.randn(c, generator=g, device=device, dtype=dtype)
    bias = 0.1 * torch.randn(c, generator=g, device=device, dtype=dtype)
    scale = 0.3 * torch.randn(n, c, generator=g, device=device, dtype=dtype)
    shift = 0.3 * torch.randn(n, c, generator=g, device=device, dtype=dtype)
    dy = torch.randn(shape, generator=g, device=device, dtype=dtype)
    if channels_last:
        dy = dy.contiguous(memory_format=torch.channels_last)
    leaves = [t.requires_grad_() for t in (x, weight, bias, scale, shift)]
    return leaves, dy


def check(args, dy, groups, eps, fused_fn=None):
    """Max |error| of y and dx against a float64 reference: (fused y, fused dx, reference y, reference dx);
    `fused_fn(x, w, b, s, t)` instead of the fused op's default.

    The reference run in the input dtype shows what PyTorch's own kernels achieve on these inputs.
    """
    def run(fn, tensors, dy):
        leaves = [a.detach().clone().requires_grad_() for a in tensors]
        y = fn(leaves[0], leaves[1], leaves[2], groups, eps, leaves[3], leaves[4])
        y.backward(dy)
        return y.detach(), leaves[0].grad

    y64, dx64 = run(group_norm_silu_reference, [a.double() for a in args], dy.double())
    err = lambda a, ref: (a.double() - ref).abs().max().item()
    fn = group_norm_silu if fused_fn is None else lambda x, w, b, g, e, s, t: fused_fn(x, w, b, s, t)
    fused, ref = run(fn, args, dy), run(group_norm_silu_reference, args, dy)
    return err(fused[0], y64), err(fused[1], dx64), err(ref[0], y64), err(ref[1], dx64)


def real_shapes(batch: int, crop: int) -> tuple[list[tuple], dict]:
    """Distinct (N, C, H, W) of the real call list, most elements first, and {shape: (groups, calls)}."""
    from collections import Counter

    from call_list import real_calls

    counts = Counter((c.n, c.c, c.h, c.w, c.groups) for c in real_calls(batch=batch, crop=crop))
    info = {k[:4]: (k[4], v) for k, v in counts.items()}
    return sorted(info, key=lambda s: -s[0] * s[1] * s[2] * s[3] * info[s][1]), info


def configs(args, device):
    """[(shape, dtype, layout)] and {shape: (groups, calls per forward)} (calls 1 off the real list)."""
    info = {}
    if args.shapes:
        shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes]
    elif args.real or (device.type == "cuda" and not args.quick and not args.hand_picked):
        shapes, info = real_shapes(args.batch, args.crop)
    else:
        shapes = QUICK_SHAPES if args.quick else GPU_SHAPES if device.type == "cuda" else CPU_SHAPES
    out = [(s, d, lay) for s in shapes for d in args.dtypes for lay in args.layouts]
    if args.fp32_baseline and not args.quick and not info:  # the plain baseline's precision and layout
        out += [(s, "fp32", "nchw") for s in shapes[: args.fp32_baseline] if (s, "fp32", "nchw") not in out]
    info = {s: info.get(s, (args.groups, 1)) for s in shapes}
    return out, info


def failed_row(provider: str, shape: tuple, groups_calls: tuple, dtype: str, layout: str, status: str, env: dict,
               mode: str = "", timing: str = "") -> dict:
    """A --real row for a provider that failed here: what and why, the timings empty."""
    return {**dict.fromkeys(ROW_FIELDS, ""), "bench": "group_norm_silu", "provider": provider, "impl": provider,
            "mode": mode, "timing": timing, "shape": "x".join(map(str, shape)), "groups": groups_calls[0],
            "calls": groups_calls[1], "dtype": dtype, "layout": layout, "status": status, **env}


def per_step_summary(p50: dict, info: dict, copy_gbps: float) -> list[str]:
    """Per (provider, timing, mode, dtype, layout): sum over the configurations of calls x p50, and the
    roofline fraction of that sum; only groups of configurations every provider ran completely."""
    lines, groups = [], {}
    for (provider, timing, mode, shape, dtype, layout), (ms, nbytes) in p50.items():
        acc = groups.setdefault((provider, timing, mode, dtype, layout), [0.0, 0.0, 0])
        calls = info[shape][1]
        acc[0] += calls * ms
        acc[1] += calls * nbytes
        acc[2] += 1
    complete = max((a[2] for a in groups.values()), default=0)
    for (provider, timing, mode, dtype, layout), (ms, nbytes, n) in sorted(groups.items()):
        if n < complete:
            continue
        gbps = nbytes / (ms * 1e-3) / 1e9
        lines.append(f"per step {provider:9s} {timing:5s} {mode:7s} {dtype} {layout}: {ms:8.3f} ms over {n} shapes, "
                     f"{gbps:6.0f} GB/s, roofline {gbps / copy_gbps:.3f}")
    return lines


def smoke(design: str, device: torch.device) -> None:
    """The fused op with `design` against the float64 reference, both layouts, one small shape, fp32: run
    in a process of its own with a time limit before the timings (benchmarks/gpu_run.py), so a design
    that faults or hangs (the slab kernels' spin waits) is left out instead of stopping the bench."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from kernel_helpers import check_group_norm_silu, gn_inputs

    n, c, h, w, g = (4, 64, 16, 16, 8) if device.type == "cuda" else (2, 16, 8, 8, 4)
    for cl in (False, True):
        inputs = gn_inputs(n, c, h, w, channels_last=cl, device=device)
        errors = check_group_norm_silu(inputs, g, torch.float32, partial(group_norm_silu, design=design))
        print(f"{design} smoke {'nhwc' if cl else 'nchw'}: " + " ".join(f"{k} {v:.1e}" for k, v in errors.items()),
              flush=True)


def main() -> None:
    p = kernel_bench_parser(__doc__, shapes_help="N,C,H,W ...", layouts=["nchw", "nhwc"],
                            providers=["fused", "slab", "groups", "rows", "groups-pre8a0dcf0", "reference", "eager",
                                       "compile", "apex", "native"],
                            modes=MODES,
                            dtypes=list(DTYPES), csv_path=RESULTS / "group_norm_silu.csv")
    p.add_argument("--groups", type=int, default=32, help="groups of --shapes and the hand-picked shapes")
    p.add_argument("--real", action="store_true", help="the real call list (the GPU default)")
    p.add_argument("--hand-picked", action="store_true", help="GPU: the old hand-picked shapes instead")
    p.add_argument("--batch", type=int, default=32, help="batch of the real call list")
    p.add_argument("--crop", type=int, default=128, help="crop of the real call list")
    p.add_argument("--smoke", choices=DESIGN_PROVIDERS, default=None,
                   help="only check this design against the reference (both layouts, one small shape) and exit")
    args = p.parse_args()
    if args.smoke:
        return smoke(args.smoke, torch.device(args.device))
    device, timings, rep, env, copy_gbps, impl = kernel_bench_setup(args, "group_norm_silu")
    eps, start = 1e-5, time.perf_counter()
    cfgs, info = configs(args, device)
    real = any(calls > 1 for _, calls in info.values()) or args.real
    if real and args.csv == RESULTS / "group_norm_silu.csv":
        args.csv = RESULTS / "group_norm_silu_real.csv"  # its rows carry a `calls` column
    step_p50 = {}

    for i, (shape, dtype_name, layout) in enumerate(cfgs):
        if args.budget_s is not None and i > 0 and time.perf_counter() - start > args.budget_s:
            print(f"budget of {args.budget_s:.0f}s spent: stopping before {shape} {dtype_name} {layout}")
            break
        dtype, numel = DTYPES[dtype_name], shape[0] * shape[1] * shape[2] * shape[3]
        groups = info[shape][0]
        torch._dynamo.reset()
        leaves, dy = inputs(shape, dtype, layout == "nhwc", device)
        err_y, err_dx, ref_err_y, ref_err_dx = check(leaves, dy, groups, eps)
        rows, p50 = [], {}
        for provider in args.providers:
            try:  # a provider that fails to build or check (compile error, CUDA fault) is recorded, not fatal
                fn = make_provider(provider, groups, eps, shape[1], dtype, device, layout)
                if fn is None:
                    continue
                own = provider in (*DESIGN_PROVIDERS, "groups-pre8a0dcf0")  # checked on their own kernels
                errs = check(leaves, dy, groups, eps, fn)[:2] if own else (err_y, err_dx)
            except Exception as e:
                reason = f"{type(e).__name__}: {str(e)[:200]}".replace("\n", " ")
                print(f"  {provider}: FAILED ({reason})", flush=True)
                if real:
                    rows.append(failed_row(provider, shape, info[shape], dtype_name, layout, f"failed: {reason}", env))
                continue
            for timing, mode in [(t, m) for t in timings for m in args.modes if t == "call" or m != "bwd"]:
                try:
                    call = partial(fn, *leaves)
                    ms, ms20, ms80 = time_mode(mode, timing, forward=call, objective=call, grad=dy, device=device,
                                               rep=rep, leaves=leaves, warmup=args.warmup)
                except Exception as e:  # a provider that cannot run this case (apex's channel limits)
                    reason = f"{type(e).__name__}: {str(e)[:200]}".replace("\n", " ")
                    print(f"  {provider} {timing} {mode}: skipped ({reason})")
                    if real:
                        rows.append(failed_row(provider, shape, info[shape], dtype_name, layout, f"skipped: {reason}",
                                               env, mode=mode, timing=timing))
                    continue  # its other modes may still run (compile: bwd alone fails, fwd+bwd works)
                gbps = ELEMENT_SIZES[mode] * numel * leaves[0].element_size() / (ms * 1e-3) / 1e9
                p50[(provider, timing, mode)] = ms
                step_p50[(provider, timing, mode, shape, dtype_name, layout)] = (
                    ms, ELEMENT_SIZES[mode] * numel * leaves[0].element_size())
                rows.append({
                    "bench": "group_norm_silu", "provider": provider,
                    "impl": impl if provider == "fused" else provider, "mode": mode, "timing": timing,
                    "shape": "x".join(map(str, shape)), "groups": groups,
                    **({"calls": info[shape][1]} if real else {}), "dtype": dtype_name,
                    "layout": layout, "modulated": provider != "apex", "ms_p50": f"{ms:.4f}",
                    "ms_p20": f"{ms20:.4f}", "ms_p80": f"{ms80:.4f}", "gbps": f"{gbps:.1f}",
                    "roofline": f"{gbps / copy_gbps:.3f}", "bytes_model": f"{ELEMENT_SIZES[mode]}E",
                    "max_err_y": f"{errs[0]:.2e}", "max_err_dx": f"{errs[1]:.2e}",
                    "ref_err_y": f"{ref_err_y:.2e}", "ref_err_dx": f"{ref_err_dx:.2e}",
                    **({"status": "ok"} if real else {}), **env,
                })  # fmt: skip
        if not args.no_csv:
            append_rows(args.csv, rows)
        summary = (f"{shape} {dtype_name} {layout}: max error vs fp64 y {err_y:.1e} dx {err_dx:.1e} "
                   f"(reference in {dtype_name}: {ref_err_y:.1e}, {ref_err_dx:.1e})")
        summary += fused_ratios(p50, rows, timings, args.modes)
        print(summary, flush=True)
        del leaves, dy
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for line in per_step_summary(step_p50, info, copy_gbps):
        print(line, flush=True)


if __name__ == "__main__":
    main()
