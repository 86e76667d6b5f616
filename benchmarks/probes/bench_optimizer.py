"""One AdamW step over the U-Net's parameters: torch's three implementations side by side.

    loop     foreach=False: one small op per tensor per update term (torch's CPU default)
    foreach  foreach=True: multi-tensor ops
    fused    fused=True: one kernel over all tensors (what `make_optimizer` takes on CPU)

The parameters are the preset's U-Net in the engine's layout (channels-last unless --nchw), with
random gradients. Each implementation gets its own optimizer; the first step (state allocation,
one-time set-up) is timed separately as `first_ms`, then the median of --steps steps in rounds
that interleave the implementations, so a change in the host's speed hits all three. Rows are
appended to benchmarks/results/optimizer.csv.

    python benchmarks/probes/bench_optimizer.py                  # tiny preset, CPU
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: harness, repo_imports
import repo_imports  # noqa: E402,F401  (before hybengine: works without an install)
import torch  # noqa: E402
from harness import RESULTS, append_rows, environment, synchronize

from hybengine.config import load_config
from hybengine.unet import build_unet

KINDS = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--nchw", action="store_true", help="NCHW parameters instead of channels-last")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=5, help="timed steps per implementation per round")
    p.add_argument("--csv", default=str(RESULTS / "optimizer.csv"))
    args = p.parse_args()
    device = torch.device(args.device)
    cfg = load_config(None, [f"model.preset={args.preset}"])
    net = build_unet(cfg.model, cfg.data.image_channels, cfg.data.num_classes).to(device)
    if not args.nchw:
        net = net.to(memory_format=torch.channels_last)
    params = list(net.parameters())
    g = torch.Generator().manual_seed(0)
    for q in params:
        q.grad = torch.randn(q.shape, generator=g).to(device=device, memory_format=torch.preserve_format)
    opts, first = {}, {}
    for kind, kw in KINDS.items():
        opts[kind] = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2, **kw)
        synchronize(device)
        t0 = time.perf_counter()
        opts[kind].step()
        synchronize(device)
        first[kind] = (time.perf_counter() - t0) * 1e3
    times = {kind: [] for kind in KINDS}
    for _ in range(args.rounds):
        for kind, opt in opts.items():
            for _ in range(args.steps):
                synchronize(device)
                t0 = time.perf_counter()
                opt.step()
                synchronize(device)
                times[kind].append((time.perf_counter() - t0) * 1e3)
    env = environment(device)
    n_values = sum(q.numel() for q in params)
    rows = []
    for kind in KINDS:
        ms = sorted(times[kind])
        rows.append({"preset": args.preset, "layout": "nchw" if args.nchw else "nhwc", "tensors": len(params),
                     "values": n_values, "impl": kind, "ms": round(statistics.median(ms), 3),
                     "p20": round(ms[len(ms) // 5], 3), "p80": round(ms[(4 * len(ms)) // 5], 3),
                     "first_ms": round(first[kind], 1), "steps": len(ms), **env})
        print(f"{kind:8s} {rows[-1]['ms']:8.2f} ms/step (p20 {rows[-1]['p20']}, p80 {rows[-1]['p80']}), "
              f"first step {rows[-1]['first_ms']} ms")
    append_rows(Path(args.csv), rows)
    print(f"{len(params)} tensors, {n_values} values; {env}")


if __name__ == "__main__":
    main()
