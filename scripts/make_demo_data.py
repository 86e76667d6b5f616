"""Builds `demo_data/scratch-assay/` from the real scratch-assay time-lapse (see its README).

Source: `scratch-assay-labeled-10T-2Ch.tiff`, uint16 (channel, time, H, W) = (4, 10, 210, 576):
channel 0 fluorescence (source domain), 1 oblique light (target domain), 2 nuclei labels,
3 cell labels. Output, per domain:

    demo_data/scratch-assay/<domain>/<split>/images/tTT_rRcC.png   16-bit gray, raw uint16 values
    demo_data/scratch-assay/<domain>/<split>/masks/tTT_rRcC.png    8-bit class index:
                                                                   0 background, 1 cell body, 2 nucleus

Each frame is cut into 2x4 tiles of 104x144 (rows 0..207, all 576 columns). The split is BY FRAME
(frames of a time-lapse are correlated; tiles of one frame never sit in both train and test).
The output is deterministic: same source, same bytes.

    python scripts/make_demo_data.py [--src PATH] [--out demo_data/scratch-assay]
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SRC = REPO / "../shared/data/scratch-assay/scratch-assay-labeled-10T-2Ch.tiff"
SHA256 = "34fcba5444b6b5c8d5635553ad73df3a48d2d43390b465dab71986586cfcc892"

DOMAINS = {"fluorescence": 0, "oblique": 1}  # output folder -> image channel
NUCLEUS_CH, CELL_CH = 2, 3
TEST_FRAMES = (2, 5, 8)  # spread over the time-lapse: early, middle and late confluence
TILE_H, TILE_W, TILE_ROWS, TILE_COLS = 104, 144, 2, 4


def semantic_mask(nuclei: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Instance labels -> class index (uint8): 0 background, 1 cell body, 2 nucleus (nucleus wins)."""
    mask = np.zeros(nuclei.shape, np.uint8)
    mask[cells > 0] = 1
    mask[nuclei > 0] = 2
    return mask


def tiles(frame: np.ndarray):
    """Yields (row, col, tile) over the 2x4 grid of 104x144 tiles (rows 0..207)."""
    for r in range(TILE_ROWS):
        for c in range(TILE_COLS):
            yield r, c, frame[r * TILE_H:(r + 1) * TILE_H, c * TILE_W:(c + 1) * TILE_W]


def save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(np.ascontiguousarray(array))  # uint16 -> mode "I;16": all 16 bits kept
    img.save(path, format="PNG", optimize=False)


README = """# Scratch assay demo data (derived)

Derived from `scratch-assay-labeled-10T-2Ch.tiff` of the PyPI package `ndev-sampledata==0.0.3`
(BSD-3-Clause, copyright 2025 Tim Monko; the licence is in `LICENSE` beside this file and travels
with these files). Source sha256 `{sha}`.

Made by `python scripts/make_demo_data.py` (deterministic). The source is a 10-frame time-lapse of
one scene, uint16 (channel, time, 210, 576).

| folder | image | role |
|---|---|---|
| `fluorescence/` | channel 0, H3342 nuclear fluorescence | source domain (many labels) |
| `oblique/` | channel 1, oblique (label-free) transmitted light | target domain (few labels) |

Both domains share the same masks. Each `<domain>/<split>/` holds `images/` (16-bit grayscale PNG,
raw uint16 values kept) and `masks/` (8-bit class-index PNG: 0 background, 1 cell body = channel 3
> 0, 2 nucleus = channel 2 > 0; nucleus wins). Every frame is cut into 2x4 tiles of 104x144 pixels
(rows 0..207, all 576 columns; the last 2 rows are dropped), named `tTT_rRcC.png` (frame, tile row,
tile column); an image and its mask share the stem.

Split **by frame, never by tile**: test = frames {test}, train = frames {train}
({n_test} and {n_train} tiles per domain). Frames of a time-lapse are strongly correlated, and
neighbouring tiles of one frame share cells at their borders, so a tile split would leak test
content into training. The test frames are spread over the time-lapse (cell coverage grows from
about 28 % at t=0 to 80 % at t=9) so that early, middle and late confluence are all evaluated.
Report results as "split by frame" wherever they are quoted.
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, default=DEFAULT_SRC, help="the scratch-assay TIFF")
    ap.add_argument("--out", type=Path, default=REPO / "demo_data" / "scratch-assay", help="output folder")
    args = ap.parse_args(argv)

    src = args.src.resolve()
    if not src.is_file():
        sys.exit(f"source TIFF not found: {src}\n"
                 "  pass --src PATH (see ../shared/data/scratch-assay/README.md)")
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    if digest != SHA256:
        sys.exit(f"{src}: sha256 {digest} does not match the expected {SHA256}; not the scratch-assay file")
    stack = tifffile.imread(src)
    if stack.dtype != np.uint16 or stack.shape[:2] != (4, 10) or stack.shape[2] < TILE_ROWS * TILE_H \
            or stack.shape[3] != TILE_COLS * TILE_W:
        sys.exit(f"{src}: unexpected array {stack.dtype} {stack.shape}; expected uint16 (4, 10, 210, 576)")

    out: Path = args.out
    for domain in DOMAINS:  # rebuild from scratch so stale tiles never linger
        if (out / domain).exists():
            shutil.rmtree(out / domain)
    n_frames = stack.shape[1]
    for t in range(n_frames):
        split = "test" if t in TEST_FRAMES else "train"
        mask = semantic_mask(stack[NUCLEUS_CH, t], stack[CELL_CH, t])
        for domain, ch in DOMAINS.items():
            base = out / domain / split
            image_tiles = tiles(stack[ch, t])
            for (r, c, img), (_, _, msk) in zip(image_tiles, tiles(mask), strict=True):
                stem = f"t{t:02d}_r{r}c{c}"
                save_png(img, base / "images" / f"{stem}.png")
                save_png(msk, base / "masks" / f"{stem}.png")

    shutil.copyfile(src.parent / "LICENSE", out / "LICENSE")
    train_frames = [t for t in range(n_frames) if t not in TEST_FRAMES]
    per_frame = TILE_ROWS * TILE_COLS
    (out / "README.md").write_text(README.format(
        sha=SHA256, test=", ".join(map(str, TEST_FRAMES)), train=", ".join(map(str, train_frames)),
        n_test=len(TEST_FRAMES) * per_frame, n_train=len(train_frames) * per_frame))
    print(f"wrote {out}: {len(DOMAINS)} domains, train frames {train_frames}, "
          f"test frames {list(TEST_FRAMES)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
