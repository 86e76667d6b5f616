"""Predict masks for a folder of images with a trained (pretrained or fine-tuned) model.

    python -m hybengine.predict --checkpoint runs/scratch_assay/pretrain_hybrid \
        --images demo_data/scratch-assay/oblique/test/images --out runs/predict [--weights ema|raw]

For every image `<stem>.<ext>` of the folder: `<out>/<stem>_mask.png` (8-bit class-index PNG, the format
the engine reads) and `<out>/<stem>_overlay.png` (the image in gray with each foreground class tinted).
Images are normalised as in training (the checkpoint's data.normalize) and predicted whole at the
fixed clean noise level (reflect-padded to the U-Net's multiple). Unreadable files are listed at the
end and the exit status is 1; the others are still written.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import ops
from .config import config_from_dict
from .data.image_io import IMAGE_EXTENSIONS, FileProblem, normalize, read_image
from .engine.checkpoint import load_weights
from .engine.distributed import pick_device
from .finetune_runner import predict_padded
from .unet import UNet, build_unet

# Class k >= 1 is tinted with PALETTE[(k - 1) % len]; background stays untinted.
PALETTE = np.array([[230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48], [145, 30, 180],
                    [70, 240, 240], [240, 50, 230], [210, 245, 60]], dtype=np.float32)
ALPHA = 0.45  # tint opacity in the overlay


def load_model(checkpoint: str, weights: str = "ema", device: torch.device | None = None):
    """(net in eval mode, its resolved Config) from a run or snapshot folder."""
    w = load_weights(checkpoint)
    cfg = config_from_dict(w["config"])
    state = w["ema"] if weights == "ema" and w.get("ema") is not None else w["model"]
    device = device or pick_device(0)
    ops.configure(cfg.kernels, device)
    net = build_unet(cfg.model, cfg.data.image_channels, cfg.data.num_classes)
    net.load_state_dict(state)
    return net.to(device).eval(), cfg


def to_display(image: np.ndarray) -> np.ndarray:
    """Normalised (C, H, W) float -> (H, W, 3) uint8, stretched to its own min..max."""
    gray = image.mean(axis=0) if image.shape[0] == 3 else image[0]
    lo, hi = float(gray.min()), float(gray.max())
    gray = (gray - lo) / (hi - lo) if hi > lo else np.zeros_like(gray)
    return np.repeat((gray * 255).round().astype(np.uint8)[..., None], 3, axis=2)


def overlay(display: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 and (H, W) class indices -> the image with each class k >= 1 tinted."""
    out = display.astype(np.float32)
    for k in np.unique(mask):
        if k == 0:
            continue
        sel = mask == k
        out[sel] = (1 - ALPHA) * out[sel] + ALPHA * PALETTE[(int(k) - 1) % len(PALETTE)]
    return out.round().astype(np.uint8)


@torch.no_grad()
def predict_file(net: UNet, cfg, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(normalised image (C, H, W), predicted class map (H, W) uint8) of one image file."""
    raw, dtype_max = read_image(path, cfg.data.image_channels)
    image = normalize(raw, cfg.data.normalize, dtype_max)
    device = next(net.parameters()).device
    logits = predict_padded(net, torch.from_numpy(image)[None].to(device), cfg.objective.sigma_clean,
                            cfg.objective.sigma_data)
    return image, logits[0].argmax(0).cpu().numpy().astype(np.uint8)


def predict_folder(checkpoint: str, images: str | Path, out: str | Path, weights: str = "ema") -> list[str]:
    """Writes a mask and an overlay per image; returns the problems (file: reason) met on the way."""
    net, cfg = load_model(checkpoint, weights)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in Path(images).iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        return [f"{images}: no images ({' '.join(IMAGE_EXTENSIONS)})"]
    problems = []
    for path in files:
        try:
            image, mask = predict_file(net, cfg, path)
        except FileProblem as e:
            problems.append(f"{path}: {e}")
            continue
        Image.fromarray(mask, mode="L").save(out / f"{path.stem}_mask.png")
        Image.fromarray(overlay(to_display(image), mask), mode="RGB").save(out / f"{path.stem}_overlay.png")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="run folder or snapshot folder")
    p.add_argument("--images", required=True, help="folder of images")
    p.add_argument("--out", required=True, help="folder for <stem>_mask.png and <stem>_overlay.png")
    p.add_argument("--weights", choices=("ema", "raw"), default="ema")
    args = p.parse_args(argv)
    try:
        problems = predict_folder(args.checkpoint, args.images, args.out, args.weights)
    except FileNotFoundError as e:
        print(f"predict error: {e}", file=sys.stderr)
        return 2
    for line in problems:
        print(f"skipped {line}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
