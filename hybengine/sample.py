"""Draw joint (image, mask) pairs from a hybrid model with the EDM Heun sampler and save them as a grid.

    python -m hybengine.sample --checkpoint runs/scratch_assay/pretrain_hybrid --out runs/samples.png \
        [--n 8] [--steps 18] [--size 64] [--seed 0] [--weights ema|raw]

Top row: generated images; bottom row: the same images with the model's mask tinted (hybengine/sampler.py
says how the pair is drawn). Only a `hybrid` (or `denoise`, image only) checkpoint generates images; a
`supervised` one never learnt to denoise and is refused.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from .predict import load_model, overlay, to_display
from .sampler import sample_pairs


def save_grid(images: np.ndarray, masks: np.ndarray, path: Path, title: str) -> None:
    """images (n, C, H, W) float, masks (n, H, W) -> PNG grid: images above, overlays below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 3.5), dpi=120, squeeze=False)
    for i in range(n):
        shown = to_display(images[i])
        axes[0, i].imshow(shown)
        axes[1, i].imshow(overlay(shown, masks[i]))
        for ax in axes[:, i]:
            ax.set_axis_off()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="PNG file of the grid")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--steps", type=int, default=18)
    p.add_argument("--size", type=int, default=0, help="image side; 0 = the checkpoint's data.crop")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", choices=("ema", "raw"), default="ema")
    args = p.parse_args(argv)
    try:
        net, cfg = load_model(args.checkpoint, args.weights)
    except FileNotFoundError as e:
        print(f"sample error: {e}", file=sys.stderr)
        return 2
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
