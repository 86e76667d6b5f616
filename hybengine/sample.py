"""Draw joint (image, mask) pairs from a hybrid model with the EDM Heun sampler and save them as a grid.

    python -m hybengine.sample --checkpoint runs/scratch_assay/pretrain_hybrid --out runs/samples.png \
        [--n 8] [--steps 18] [--size 64] [--seed 0] [--weights ema|raw]

Top row: generated images; bottom row: the same images with the model's mask tinted (hybengine/inference.py
says how the pair is drawn). Only a `hybrid` (or `denoise`, image only) checkpoint generates images; a
`supervised` one never learnt to denoise and is refused.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .cli import add_debug, guarded
from .inference import load_model, sample_pairs, save_grid


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="PNG file of the grid")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--steps", type=int, default=18)
    p.add_argument("--size", type=int, default=0, help="image side; 0 = the checkpoint's data.crop")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", choices=("ema", "raw"), default="ema")
    add_debug(p)
    args = p.parse_args(argv)
    return guarded("sample", args.debug, lambda: _sample(args))


def _sample(args) -> int:
    net, cfg = load_model(args.checkpoint, args.weights)
    if cfg.objective.mode == "supervised":
        print(f"sample error: {args.checkpoint} was pretrained in supervised mode and cannot generate images; "
              "use a hybrid checkpoint", file=sys.stderr)
        return 2
    size = args.size or cfg.data.crop
    if args.n < 1 or args.steps < 1 or size % net.downsample_factor:
        print(f"sample error: need --n >= 1, --steps >= 1 and a size divisible by {net.downsample_factor}",
              file=sys.stderr)
        return 2
    o = cfg.objective
    images, masks = sample_pairs(net, args.n, cfg.data.image_channels, size, o.sigma_data, o.sigma_clean,
                                 args.steps, generator=torch.Generator().manual_seed(args.seed))
    save_grid(images.cpu().numpy(), masks.cpu().numpy(), Path(args.out),
              f"{args.n} joint samples, EDM Heun {args.steps} steps, {Path(args.checkpoint).name} ({o.mode})")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
