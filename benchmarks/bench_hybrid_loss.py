"""Joint hybrid loss (EDM denoise term + masked cross-entropy): the fused op against its baselines.

Providers (same inputs, same run):
    fused      hybengine.kernels.hybrid_loss (one Triton pass writes the per-sample terms and dF)
    reference  hybrid_loss_reference in eager mode (the unfused loss)
    compile    torch.compile(hybrid_loss_reference), static shapes
    native     the fused op with its CPU body forced to the C++ kernel of kernels/native (CPU runs
               where the library was built)

Inputs as in training: F = out (B, I+K, H, W) in the run's dtype, x and x_n fp32 data, y int64.
Bytes-moved model per pixel (E_F, E_x, E_y element sizes; C = I+K; per-sample scalars ignored):
    fwd      read F, x_n, x, y                       C E_F + 2 I E_x + E_y
    bwd      read F (or dF), write dF                2 C E_F
    fwd+bwd  read F, x_n, x, y, write dF             2 C E_F + 2 I E_x + E_y
The loss is backpropagated from sum(g_denoise * denoise + g_mask * mask). GB/s = model bytes / p50.

Rows are appended to --csv (default benchmarks/results/hybrid_loss.csv), with the max error of
each output against a float64 reference for fused (`max_err_*`) and the reference in the run's
dtype (`ref_err_*`).

    python benchmarks/bench_hybrid_loss.py                  # GPU shapes
    python benchmarks/bench_hybrid_loss.py --quick          # CPU: one small shape
"""
import gc
import time
from functools import partial

import repo_imports  # noqa: F401  (before hybengine: works without an install)
import torch
from harness import RESULTS, append_rows, fused_ratios, kernel_bench_parser, kernel_bench_setup, time_mode

from hybengine.kernels import hybrid_loss, hybrid_loss_reference, native

# (B, I, K, H, W)
GPU_SHAPES = [(64, 3, 2, 64, 64), (8, 3, 2, 256, 256), (16, 3, 2, 128, 128), (64, 1, 2, 64, 64), (8, 3, 8, 256, 256)]
CPU_SHAPES = [(8, 3, 2, 64, 64), (4, 1, 4, 64, 64)]
QUICK_SHAPES = [(4, 3, 2, 32, 32)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MODES = ("fwd", "bwd", "fwd+bwd")
W_MASK = 0.3


def bytes_moved(mode: str, b: int, n_img: int, k: int, h: int, w: int, e_f: int, e_x: int = 4, e_y: int = 8) -> int:
    c, pixels = n_img + k, b * h * w
    read_inputs = c * e_f + 2 * n_img * e_x + e_y
    per_pixel = {"fwd": read_inputs, "bwd": 2 * c * e_f, "fwd+bwd": read_inputs + c * e_f}[mode]
    return per_pixel * pixels


def make_provider(name: str, device=None):
    if name == "fused":
        return hybrid_loss  # the default body, as op_backends() says
    if name == "native":
        if device is None or device.type != "cpu" or not native.available():
            return None
        return partial(hybrid_loss, body="native")  # forward and backward bodies
    if name == "reference":
        return hybrid_loss_reference
    if name == "compile":
        return torch.compile(hybrid_loss_reference, dynamic=False)
    raise ValueError(f"unknown provider {name}")


def inputs(shape, dtype, channels_last, device, seed=0):
    b, n_img, k, h, w = shape
    g = torch.Generator(device=device).manual_seed(seed)
    rand = lambda *s, dt=torch.float32: torch.randn(*s, generator=g, device=device, dtype=dt)
    out = 2 * rand(b, n_img + k, h, w, dt=dtype)
    if channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    x = rand(b, n_img, h, w)
    x_n = x + rand(b, n_img, h, w)
    y = torch.randint(0, k, (b, h, w), generator=g, device=device)
    y[torch.rand(b, h, w, generator=g, device=device) < 0.1] = -100
    sigma = torch.exp(-1.2 + 1.2 * rand(b))
    c_skip, c_out = 0.25 / (sigma**2 + 0.25), sigma * 0.5 / (sigma**2 + 0.25).sqrt()
    lam = (sigma**2 + 0.25) / (sigma * 0.5) ** 2
    upstream = (rand(b), rand(b))
    return out.requires_grad_(), (x_n, x, y, c_skip, c_out, lam), upstream


def scalar_loss(fn, out, data, upstream):
    denoise, mask = fn(out, *data, W_MASK)
    return (denoise * upstream[0]).sum() + (mask * upstream[1]).sum()


def check(out, data, upstream):
    """Max |error| against float64 of (denoise, mask, dF), for fused and for the reference."""

    def run(fn, out, data):
        out = out.detach().clone().requires_grad_()
        denoise, mask = fn(out, *data, W_MASK)
        ((denoise * upstream[0]).sum() + (mask * upstream[1]).sum()).backward()
        return denoise.detach(), mask.detach(), out.grad

    data64 = [t.double() if t.is_floating_point() else t for t in data]
    ref64 = run(hybrid_loss_reference, out.double(), data64)
    err = lambda got: [(a.double() - r).abs().max().item() for a, r in zip(got, ref64, strict=True)]
    return err(run(hybrid_loss, out, data)), err(run(hybrid_loss_reference, out, data))


def main() -> None:
    p = kernel_bench_parser(__doc__, shapes_help="B,I,K,H,W ...", layouts=["nchw"],
                            providers=["fused", "reference", "compile", "native"], modes=MODES,
                            dtypes=list(DTYPES), csv_path=RESULTS / "hybrid_loss.csv")
    args = p.parse_args()
    device, timings, rep, env, copy_gbps, impl = kernel_bench_setup(args, "hybrid_loss")

    if args.shapes:
        shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes]
    else:
        shapes = QUICK_SHAPES if args.quick else GPU_SHAPES if device.type == "cuda" else CPU_SHAPES
    configs = [(s, d, lay) for s in shapes for d in args.dtypes for lay in args.layouts]
    if not args.quick:
        configs += [(s, "fp32", "nchw") for s in shapes[: args.fp32_baseline] if (s, "fp32", "nchw") not in configs]
    start = time.perf_counter()
    for i, (shape, dtype_name, layout) in enumerate(configs):
        if args.budget_s is not None and i > 0 and time.perf_counter() - start > args.budget_s:
            print(f"budget of {args.budget_s:.0f}s spent: stopping before {shape} {dtype_name} {layout}")
            break
        torch._dynamo.reset()
        dtype = DTYPES[dtype_name]
        out, data, upstream = inputs(shape, dtype, layout == "nhwc", device)
        errs, ref_errs = check(out, data, upstream)
        rows, p50 = [], {}
        for provider in args.providers:
            fn = make_provider(provider, device)
            if fn is None:
                continue
            for timing, mode in [(t, m) for t in timings for m in args.modes if t == "call" or m != "bwd"]:
                try:
                    ms, ms20, ms80 = time_mode(
                        mode, timing, forward=partial(fn, out, *data, W_MASK),
                        objective=partial(scalar_loss, fn, out, data, upstream), grad=None, device=device, rep=rep,
                        leaves=[out], warmup=args.warmup)
                except Exception as e:  # compile: bwd alone (retain_graph) meets donated buffers; a failed capture
                    print(f"  {provider} {timing} {mode}: skipped ({type(e).__name__}: {str(e)[:100]})")
                    continue
                gbps = bytes_moved(mode, *shape, e_f=out.element_size()) / (ms * 1e-3) / 1e9
                p50[(provider, timing, mode)] = ms
                rows.append({
                    "bench": "hybrid_loss", "provider": provider, "impl": impl if provider == "fused" else provider,
                    "mode": mode, "timing": timing, "shape": "x".join(map(str, shape)), "dtype": dtype_name,
                    "layout": layout,
                    "ms_p50": f"{ms:.4f}", "ms_p20": f"{ms20:.4f}", "ms_p80": f"{ms80:.4f}", "gbps": f"{gbps:.1f}",
                    "roofline": f"{gbps / copy_gbps:.3f}",
                    **{f"max_err_{n}": f"{e:.2e}" for n, e in zip(("denoise", "mask", "dF"), errs, strict=True)},
                    **{f"ref_err_{n}": f"{e:.2e}" for n, e in zip(("denoise", "mask", "dF"), ref_errs, strict=True)},
                    **env,
                })  # fmt: skip
        if not args.no_csv:
            append_rows(args.csv, rows)
        summary = (f"{shape} {dtype_name} {layout}: max error vs fp64 (denoise, mask, dF) "
                   f"{', '.join(f'{e:.1e}' for e in errs)} (reference: {', '.join(f'{e:.1e}' for e in ref_errs)})")
        summary += fused_ratios(p50, rows, timings, args.modes)
        print(summary, flush=True)
        del out, data
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
