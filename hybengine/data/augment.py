"""Joint image/mask augmentation: one set of random parameters applied to both.

Geometric (image and mask, same parameters): pad to the crop if the file is smaller (reflect for
the image, `ignore_index` for the mask), crop, horizontal flip, vertical flip, rotation by
k * 90 degrees. Pure index operations, so the mask needs no interpolation and stays exact.
Intensity (image only): y = contrast * x + brightness, with contrast in [1 - j, 1 + j] and
brightness in [-j, j] (the normalised image spans about [-1, 1]; j = `intensity_jitter`).

Few-label augmentation (nnU-Net's spatial and intensity set; `FewLabelAug`, the `data.aug_*` fields,
all off by default so that earlier runs reproduce): zoom and a small rotation about the crop's centre
and an elastic deformation (a smooth random displacement field: a coarse grid of normal draws,
upsampled bicubically), applied as ONE sampling grid to image (bilinear, edge pixels repeated outside the file) and
mask (nearest, `ignore_index` outside the file); then, image only, gamma on the image's own range,
Gaussian blur and Gaussian noise. Their parameters are drawn after the ones above and only for the
options that are on, so a run with them off draws exactly what it drew before.

Randomness comes only from the generator passed in; `sample_rng(seed, epoch, index)` makes it
from the sample's identity, never from a worker, a process or the order of iteration.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

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


@dataclass(frozen=True)
class FewLabelAug:
    """Amplitudes of the few-label augmentations (the data.aug_* config fields); 0 turns one off."""
    scale: float = 0.0  # zoom drawn log-uniformly in [1 / (1 + scale), 1 + scale]
    rotate: float = 0.0  # degrees, uniform in [-rotate, rotate]
    elastic: float = 0.0  # largest displacement of the elastic field, pixels
    gamma: float = 0.0  # image only: gamma drawn log-uniformly in [1 / (1 + gamma), 1 + gamma]
    noise: float = 0.0  # image only: Gaussian noise std, uniform in [0, noise] (normalised units)
    blur: float = 0.0  # image only: Gaussian blur sigma, uniform in [0, blur] pixels

    @classmethod
    def from_config(cls, cfg) -> FewLabelAug:
        return cls(cfg.aug_scale, cfg.aug_rotate, cfg.aug_elastic, cfg.aug_gamma, cfg.aug_noise, cfg.aug_blur)

    @property
    def warps(self) -> bool:
        return bool(self.scale or self.rotate or self.elastic)


ELASTIC_GRID = 4  # control points per side of the elastic field: a few smooth bends per crop


@dataclass(frozen=True)
class WarpParams:
    zoom: float = 1.0  # > 1 magnifies
    angle: float = 0.0  # radians, counter-clockwise
    field: np.ndarray | None = None  # (2, ELASTIC_GRID, ELASTIC_GRID) displacement (dy, dx) in pixels
    gamma: float = 1.0
    blur: float = 0.0  # sigma, pixels
    noise: float = 0.0  # std
    noise_seed: int = 0


def sample_warp(rng: np.random.Generator, a: FewLabelAug) -> WarpParams:
    """Draws the few-label parameters, in a fixed order, only for the options that are on."""
    zoom = float(np.exp(rng.uniform(-1, 1) * np.log1p(a.scale))) if a.scale else 1.0
    angle = float(np.deg2rad(rng.uniform(-a.rotate, a.rotate))) if a.rotate else 0.0
    field = None
    if a.elastic:  # normal control points scaled so that their largest |value| is at most `elastic`
        g = rng.standard_normal((2, ELASTIC_GRID, ELASTIC_GRID))
        field = (g * (a.elastic * rng.uniform(0, 1) / max(np.abs(g).max(), 1e-6))).astype(np.float32)
    gamma = float(np.exp(rng.uniform(-1, 1) * np.log1p(a.gamma))) if a.gamma else 1.0
    blur = float(rng.uniform(0, a.blur)) if a.blur else 0.0
    noise = float(rng.uniform(0, a.noise)) if a.noise else 0.0
    noise_seed = int(rng.integers(0, 2**31)) if a.noise else 0
    return WarpParams(zoom, angle, field, gamma, blur, noise, noise_seed)


def warp_crop(image: np.ndarray, mask: np.ndarray, p: AugParams, w: WarpParams, crop: int, ignore_index: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """The crop window at (p.top, p.left) of a padded pair, zoomed by w.zoom, turned by w.angle about the
    window's centre and displaced by w.field, as one sampling grid for both: image (C, crop, crop)
    bilinear, edge pixels repeated outside the file (as DALI's warp_affine clamps); mask (crop, crop)
    nearest, ignore_index outside the file."""
    H, W = mask.shape
    c = (crop - 1) / 2
    yy, xx = torch.meshgrid(torch.arange(crop, dtype=torch.float64) - c, torch.arange(crop, dtype=torch.float64) - c,
                            indexing="ij")
    cos, sin = math.cos(w.angle), math.sin(w.angle)
    sy = (cos * yy - sin * xx) / w.zoom + p.top + c  # output pixel -> source pixel
    sx = (sin * yy + cos * xx) / w.zoom + p.left + c
    if w.field is not None:
        d = F.interpolate(torch.from_numpy(w.field)[None].double(), size=(crop, crop), mode="bicubic",
                          align_corners=True)[0]
        sy, sx = sy + d[0], sx + d[1]
    grid = rearrange([sx / (W - 1) * 2 - 1, sy / (H - 1) * 2 - 1], "xy h w -> 1 h w xy").float()
    out = F.grid_sample(torch.from_numpy(np.ascontiguousarray(image))[None], grid, mode="bilinear",
                        padding_mode="border", align_corners=True)[0]
    shifted = torch.from_numpy(mask.astype(np.float32) + 1)[None, None]  # 0 marks "outside the file"
    m = F.grid_sample(shifted, grid, mode="nearest", padding_mode="zeros", align_corners=True)[0, 0]
    m = torch.where(m == 0, float(ignore_index + 1), m) - 1
    return out.numpy(), m.numpy().astype(mask.dtype)


def apply_image_warp(image: np.ndarray, w: WarpParams) -> np.ndarray:
    """Gamma (on the image's own min..max, as nnU-Net), then Gaussian blur, then Gaussian noise."""
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    if w.gamma != 1.0:
        lo, hi = x.min(), x.max()
        if hi > lo:
            x = ((x - lo) / (hi - lo)).pow(w.gamma) * (hi - lo) + lo
    if w.blur > 0:
        r = max(1, math.ceil(3 * w.blur))
        k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float32) / w.blur) ** 2)
        k = k / k.sum()
        C = x.shape[0]
        x = F.pad(x[None], (r, r, r, r), mode="reflect" if min(x.shape[-2:]) > r else "replicate")
        x = F.conv2d(x, k.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)
        x = F.conv2d(x, k.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)[0]
    if w.noise > 0:
        x = x + torch.from_numpy(np.random.default_rng(w.noise_seed).standard_normal(x.shape, dtype=np.float32)
                                 * np.float32(w.noise))
    return x.numpy().astype(np.float32)


def augment_pair(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, crop: int,
                 augment: bool, jitter: float, ignore_index: int, few: FewLabelAug | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Normalised image (C, H, W) float32 and mask (H, W) -> (C, crop, crop), (crop, crop).
    `few`: the few-label augmentations (off when None or all 0, and always off with augment=False)."""
    image, mask = pad_pair(image, mask, crop, ignore_index)
    p = sample_params(rng, *mask.shape, crop, augment, jitter)
    if not (augment and few is not None and few != FewLabelAug()):
        return apply_intensity(apply_geometry(image, p, crop), p), apply_geometry(mask, p, crop)
    w = sample_warp(rng, few)
    if few.warps:  # the warped window replaces the plain crop; flips and quarter turns follow as before
        image, mask = warp_crop(image, mask, p, w, crop, ignore_index)
        p = AugParams(0, 0, p.flip_h, p.flip_v, p.k_rot, p.contrast, p.brightness)
    image, mask = apply_geometry(image, p, crop), apply_geometry(mask, p, crop)
    return apply_image_warp(apply_intensity(image, p), w), mask
