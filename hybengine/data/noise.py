"""The noise level of a folder's images, estimated from the images alone (no mask is read).

Immerkaer's method (J. Immerkaer, "Fast noise variance estimation", CVIU 64(2), 1996): the image is
filtered with the difference of two Laplacians

    N = [[1, -2, 1], [-2, 4, -2], [1, -2, 1]]

which cancels constant, linear and (separably) quadratic intensity, so what is left is noise; for white
Gaussian noise of std sigma, E|I * N| = sigma * 6 * sqrt(2 / pi), hence

    sigma = sqrt(pi / 2) / (6 (W - 2) (H - 2)) * sum |I * N|      (interior pixels)

Images are measured after the loader's normalisation (`apply_norm`), the units the network's sigma is
in; a folder's estimate is the median over its images (per image, channels averaged). Used by
`finetune.sigma=estimate` (hybengine/finetune/runner.py): fixed from the target's training IMAGES before
any of their labels is read.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from hybengine.config import DataConfig
from hybengine.data.errors import DatasetError
from hybengine.data.image_io import IMAGE_EXTENSIONS, FileProblem, apply_norm, as_channels, norm_params, read_raw

_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)


def immerkaer_sigma(image: np.ndarray) -> float:
    """Noise std of one image, (H, W) or (C, H, W) (channels averaged); needs H, W >= 3."""
    img = np.asarray(image, dtype=np.float64)
    img = img[None] if img.ndim == 2 else img
    C, H, W = img.shape
    if H < 3 or W < 3:
        raise ValueError(f"immerkaer_sigma: image {H}x{W} is too small (at least 3x3)")
    response = sum(_KERNEL[i, j] * img[:, i:H - 2 + i, j:W - 2 + j] for i in range(3) for j in range(3))
    return float(math.sqrt(math.pi / 2) * np.abs(response).sum() / (6 * C * (W - 2) * (H - 2)))


def folder_sigma(root: str | Path, split: str, cfg: DataConfig) -> float:
    """Median Immerkaer estimate over `<root>/<split>/images` (normalised like training reads them)."""
    folder = Path(root) / split / "images"
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS) if folder.is_dir() else []
    if not files:
        raise DatasetError(f"{folder}: no images to estimate the noise level from")
    sigmas = []
    for path in files:
        try:
            raw, dtype_max = as_channels(read_raw(path), cfg.image_channels)
        except FileProblem as e:
            raise DatasetError(f"{path}: {e}") from None
        sigmas.append(immerkaer_sigma(apply_norm(raw, norm_params(raw, cfg.normalize, dtype_max))))
    return float(np.median(sigmas))
