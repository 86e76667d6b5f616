"""Joint image/mask augmentation: one set of random parameters applied to both.

Geometric (image and mask, same parameters): pad to the crop if the file is smaller (reflect for
the image, `ignore_index` for the mask), crop, horizontal flip, vertical flip, rotation by
k * 90 degrees. Pure index operations, so the mask needs no interpolation and stays exact.
Intensity (image only): y = contrast * x + brightness, with contrast in [1 - j, 1 + j] and
brightness in [-j, j] (the normalised image spans about [-1, 1]; j = `intensity_jitter`).

Randomness comes only from the generator passed in; `sample_rng(seed, epoch, index)` makes it
from the sample's identity, never from a worker, a process or the order of iteration.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_AUG_TAG = 2  # first SeedSequence word: keeps these streams apart from the epoch permutations


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one sample's augmentation: a function of (seed, epoch, index) only."""
    return np.random.default_rng([_AUG_TAG, seed % 2**63, epoch, index])


@dataclass(frozen=True)
class AugParams:
    top: int  # crop window, in the padded image
    left: int
    flip_h: bool  # mirror left-right
    flip_v: bool  # mirror top-bottom
    k_rot: int  # counter-clockwise quarter turns, 0..3
    contrast: float  # image only
    brightness: float  # image only


def pad_amounts(h: int, w: int, crop: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """((top, bottom), (left, right)) padding that makes an (h, w) file at least crop x crop."""
    dh, dw = max(crop - h, 0), max(crop - w, 0)
    return (dh // 2, dh - dh // 2), (dw // 2, dw - dw // 2)


def sample_params(rng: np.random.Generator, h: int, w: int, crop: int, augment: bool,
                  jitter: float) -> AugParams:
    """Draws the parameters for a padded (h, w) image (h, w >= crop), always in the same order.
    augment=False: the centred crop and no other change."""
    if not augment:
        return AugParams((h - crop) // 2, (w - crop) // 2, False, False, 0, 1.0, 0.0)
    top = int(rng.integers(0, h - crop + 1))
    left = int(rng.integers(0, w - crop + 1))
    flip_h, flip_v = (bool(b) for b in rng.integers(0, 2, size=2))
    k_rot = int(rng.integers(0, 4))
    contrast = float(rng.uniform(1.0 - jitter, 1.0 + jitter))
    brightness = float(rng.uniform(-jitter, jitter))
    return AugParams(top, left, flip_h, flip_v, k_rot, contrast, brightness)


def pad_pair(image: np.ndarray, mask: np.ndarray, crop: int, ignore_index: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """Pads image (C, H, W) by reflection and mask (H, W) with ignore_index up to crop x crop."""
    (pt, pb), (pl, pr) = pad_amounts(*mask.shape, crop)
    if pt + pb + pl + pr == 0:
        return image, mask
    image = np.pad(image, ((0, 0), (pt, pb), (pl, pr)), mode="reflect" if min(mask.shape) > 1 else "edge")
    mask = np.pad(mask, ((pt, pb), (pl, pr)), mode="constant", constant_values=ignore_index)
    return image, mask


def apply_geometry(a: np.ndarray, p: AugParams, crop: int) -> np.ndarray:
    """Crop, flips and rotation on the last two axes of `a` (image (C, H, W) or mask (H, W))."""
    a = a[..., p.top:p.top + crop, p.left:p.left + crop]
    if p.flip_h:
        a = a[..., :, ::-1]
    if p.flip_v:
        a = a[..., ::-1, :]
    if p.k_rot:
        a = np.rot90(a, p.k_rot, axes=(-2, -1))
    return np.ascontiguousarray(a)


def as_transpose_flips(p: AugParams) -> tuple[bool, bool, bool]:
    """The same dihedral transform as flips-then-`k_rot` quarter turns (`apply_geometry`), written
    as (transpose, flip_h, flip_v): transpose first, then the flips. For pipelines that have
    transpose and flip but no exact 90-degree rotation (DALI). Derivation, with T = transpose and
    F(h, v) = flips: rot(1) = F(0, 1) T, rot(2) = F(1, 1), rot(3) = F(1, 0) T, and
    T F(h, v) = F(v, h) T."""
    h, v = p.flip_h, p.flip_v
    if p.k_rot % 2 == 0:
        flip_both = p.k_rot == 2
        return False, h ^ flip_both, v ^ flip_both
    rh, rv = (False, True) if p.k_rot == 1 else (True, False)
    return True, rh ^ v, rv ^ h


def apply_intensity(image: np.ndarray, p: AugParams) -> np.ndarray:
    if p.contrast == 1.0 and p.brightness == 0.0:
        return image
    return (image * np.float32(p.contrast) + np.float32(p.brightness)).astype(np.float32)


def augment_pair(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, crop: int,
                 augment: bool, jitter: float, ignore_index: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised image (C, H, W) float32 and mask (H, W) -> (C, crop, crop), (crop, crop)."""
    image, mask = pad_pair(image, mask, crop, ignore_index)
    p = sample_params(rng, *mask.shape, crop, augment, jitter)
    return apply_intensity(apply_geometry(image, p, crop), p), apply_geometry(mask, p, crop)
