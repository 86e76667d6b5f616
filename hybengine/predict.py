"""Predict masks for a folder of images with a trained (pretrained or fine-tuned) model.

    python -m hybengine.predict --checkpoint runs/scratch_assay/pretrain_hybrid \
        --images demo_data/scratch-assay/oblique/test/images --out runs/predict [--weights ema|raw]

For every image `<stem>.<ext>` of the folder: `<out>/<stem>_mask.png` (8-bit class-index PNG, the format
the engine reads) and `<out>/<stem>_overlay.png` (the image in gray with each foreground class tinted).
Images are normalised as in training (the checkpoint's data.normalize) and predicted whole at the
fixed clean noise level (padded to the U-Net's multiple as augmentation pads). Files that cannot be
read or predicted are listed at the end and the exit status is 1; the others are still written. A bad
checkpoint or folder: one line, exit status 2 (--debug: the traceback).
"""
from __future__ import annotations

import argparse
import sys

from .cli import add_debug, guarded
from .inference import predict_folder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="run folder or snapshot folder")
    p.add_argument("--images", required=True, help="folder of images")
    p.add_argument("--out", required=True, help="folder for <stem>_mask.png and <stem>_overlay.png")
    p.add_argument("--weights", choices=("ema", "raw"), default="ema")
    add_debug(p)
    args = p.parse_args(argv)
    problems: list[str] = []
    code = guarded("predict", args.debug,
                   lambda: problems.extend(predict_folder(args.checkpoint, args.images, args.out, args.weights)))
    if code:
        return code
    for line in problems:
        print(f"skipped {line}", file=sys.stderr)
    return 1 if problems else 0

if __name__ == "__main__":
    sys.exit(main())
