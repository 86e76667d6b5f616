"""Host cost of one eager call of each fused op: the eager path against the custom op it bypasses.

On tensors so small that the kernels cost next to nothing, the time of a call is what the host
does around them. Three ways to call the same op body, side by side in one run:
    eager      hybengine.kernels.<op>: an autograd.Function over the body (what eager code gets)
    custom_op  the torch.library custom op with its registered autograd (what the eager path was
               before; compiled graphs still hold it)
    reference  the pure-PyTorch reference in eager mode
Modes: fwd (forward only) and fwd+bwd (forward, then backward of a sum). Median microseconds over
--calls calls after a warm-up; rows appended to benchmarks/results/op_overhead.csv.

    python benchmarks/probes/bench_op_overhead.py
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: harness, repo_imports
import repo_imports  # noqa: E402,F401  (before hybengine: works without an install)
import torch  # noqa: E402
from harness import RESULTS, append_rows, environment

from hybengine.kernels import bodies, group_norm_silu, group_norm_silu_reference, hybrid_loss, hybrid_loss_reference
from hybengine.kernels.group_norm_silu.op import group_norm_silu_fwd_op
from hybengine.kernels.hybrid_loss import hybrid_loss_fwd_op


def gn_case(device):
    x = torch.randn(2, 8, 4, 4, device=device, requires_grad=True)
    w, b = torch.ones(8, device=device, requires_grad=True), torch.zeros(8, device=device, requires_grad=True)
    calls = {
        "eager": lambda: group_norm_silu(x, w, b, 4, 1e-5),
        "custom_op": lambda: group_norm_silu_fwd_op(x, w, b, None, None, 4, 1e-5)[0],
        "reference": lambda: group_norm_silu_reference(x, w, b, 4, 1e-5),
    }
    return calls, lambda y: y.sum(), [x, w, b]


def loss_case(device):
    out = torch.randn(2, 5, 4, 4, device=device, requires_grad=True)
    x = torch.randn(2, 3, 4, 4, device=device)
    data = (x + torch.randn_like(x), x, torch.randint(0, 2, (2, 4, 4), device=device),
            *(torch.rand(2, device=device) + 0.5 for _ in range(3)))
    calls = {
        "eager": lambda: hybrid_loss(out, *data, 0.3),
        "custom_op": lambda: hybrid_loss_fwd_op(out, *data, 0.3, -100, True)[:2],
        "reference": lambda: hybrid_loss_reference(out, *data, 0.3),
    }
    return calls, lambda terms: terms[0].sum() + terms[1].sum(), [out]


def median_us(fn, leaves, calls: int) -> float:
    def once():
        for t in leaves:
            t.grad = None
        fn()

    for _ in range(50):
        once()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        once()
        times.append(1e6 * (time.perf_counter() - t0))
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--csv", type=Path, default=RESULTS / "op_overhead.csv")
    args = p.parse_args()
    device = torch.device("cpu")  # the host's work is what is measured; CUDA adds its launch costs
    env = environment(device)
    print(env, bodies.op_backends())
    rows = []
    for op, case in (("group_norm_silu", gn_case), ("hybrid_loss", loss_case)):
        calls, to_scalar, leaves = case(device)
        for mode in ("fwd", "fwd+bwd"):
            us = {}
            for path, call in calls.items():
                fn = call if mode == "fwd" else (lambda call=call, to_scalar=to_scalar: to_scalar(call()).backward())
                us[path] = median_us(fn, leaves, args.calls)
                rows.append({"op": op, "cpu_body": bodies.op_backends()[op]["cpu"], "mode": mode, "path": path,
                             "us_p50": f"{us[path]:.1f}", **env})
            print(f"{op:16s} {mode:8s} " + "  ".join(f"{k} {v:7.1f} us" for k, v in us.items()))
    append_rows(args.csv, rows)
    print(f"{len(rows)} rows appended to {args.csv}")


if __name__ == "__main__":
    main()
