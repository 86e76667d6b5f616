"""Predict masks for a folder of images with a trained (pretrained or fine-tuned) model.

    hybengine predict --checkpoint runs/scratch_assay/pretrain_hybrid \
        --images demo_data/scratch-assay/oblique/test/images --out runs/predict \
        [--weights ema|raw] [--whole | --tile 64 --overlap 0.25] [--batch-tiles 16] [--tta] \
        [--save-probs npy|tiff|both] [--device cpu|cuda|cuda:1] [--precision auto|fp32|bf16]

For every image `<stem>.<ext>` of the folder: `<out>/<stem>_mask.png` (8-bit class-index PNG, the format
the engine reads), `<out>/<stem>_overlay.png` (the image in gray with each foreground class tinted) and,
with --save-probs, `<out>/<stem>_probs.npy` / `.tif`: float32 (K, H, W) class probabilities that sum to 1.
Images are normalised as in training (the checkpoint's data.normalize) and predicted at the fixed clean
noise level in Gaussian-blended tiles at the checkpoint's training crop (hybengine/inference.py; defaults:
the config's `predict` section, docs/configuration.md); --whole predicts each image in one pass. Files
that cannot be read or predicted are listed at the end and the exit status is 1; the others are still
written. A bad checkpoint, folder or option: one line, exit status 2 (--debug: the traceback).
"""
from __future__ import annotations

import argparse
import logging
import sys

from .cli import add_debug, guarded
from .inference import predict_folder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="run folder or snapshot folder")
    p.add_argument("--images", required=True, help="folder of images")
    p.add_argument("--out", required=True, help="folder for <stem>_mask.png and <stem>_overlay.png")
    p.add_argument("--weights", choices=("ema", "raw"), default="ema")
    p.add_argument("--whole", action="store_true", help="one forward pass per image instead of tiles")
    p.add_argument("--tile", type=int, help="tile side in pixels (default: the checkpoint's training crop)")
    p.add_argument("--overlap", type=float, help="share of a tile its neighbour also covers (default 0.25)")
    p.add_argument("--batch-tiles", type=int, help="tiles per forward pass (default 16)")
    p.add_argument("--tta", action="store_true", help="average the probabilities of the image and its 3 mirrorings")
    p.add_argument("--save-probs", choices=("npy", "tiff", "both"), help="also write float32 class probabilities")
    p.add_argument("--device", help="torch device (default: the first GPU, else the CPU)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), help="autocast (default auto: bf16 on CUDA)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_debug(p)
    args = p.parse_args(argv)
    overrides = {k: v for k, v in (("tile", args.tile), ("overlap", args.overlap), ("batch_tiles", args.batch_tiles),
                                   ("precision", args.precision)) if v is not None}
    overrides.update({"mode": "whole"} if args.whole else {})
    overrides.update({"tta": True} if args.tta else {})
    formats = {None: (), "npy": ("npy",), "tiff": ("tiff",), "both": ("npy", "tiff")}[args.save_probs]
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    problems: list[str] = []
    code = guarded("predict", args.debug, lambda: problems.extend(predict_folder(
        args.checkpoint, args.images, args.out, args.weights, overrides, args.device, formats, not args.no_progress)))
    if code:
        return code
    for line in problems:
        print(f"skipped {line}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
