"""Helpers for the data tests (no tests here): tiny dataset folders written with Pillow."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from hybengine.config import DataConfig


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array)).save(path)
    return path


def write_rgb16_png(path: Path, array: np.ndarray) -> Path:
    """A 16-bit RGB PNG (Pillow cannot write one), written by hand: IHDR, one IDAT, IEND."""
    h, w, _ = array.shape
    raw = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(h))  # filter 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
    return path


def write_pair(root: Path, stem: str, image: np.ndarray, mask: np.ndarray, split: str = "train",
               ext: str = ".png") -> None:
    write_png(root / split / "images" / f"{stem}{ext}", image)
    write_png(root / split / "masks" / f"{stem}.png", mask)


def threshold_folder(root: Path, n: int, h: int, w: int, seed: int = 0, split: str = "train") -> DataConfig:
    """n random 8-bit images whose masks are computed FROM them: 1 where image > 127, else 0."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        image = rng.integers(0, 256, size=(h, w), dtype=np.uint8)
        write_pair(root, f"img{i:03d}", image, (image > 127).astype(np.uint8), split)
    return DataConfig(root=str(root), num_classes=2, normalize="dtype")
