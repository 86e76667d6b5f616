"""Inference without the training loop: load a trained model, predict masks, draw joint samples.

Used by the `predict` and `sample` entry points and by fine-tune and sweep evaluation: every mask and
Dice the engine reports comes from `predict_probs`, at the fixed clean noise level `objective.sigma_clean`
(the convention fine-tuning trains at), as `cfg.predict` says. By default the image is cut into
overlapping tiles at the model's training crop whose softmax probabilities are blended with a Gaussian
weight (nnU-Net; MONAI's sliding window): the model sees the context it was trained on, and memory is
the image's own buffers plus one batch of tiles. `predict.mode=whole` runs the image in one pass.
`predict.tta` averages the probabilities of the four mirrorings.

The sampler is EDM's deterministic Heun sampler (Karras et al. 2022, Algorithm 1) over the hybrid
model's denoiser D(x; sigma) (hybengine/objective.py):

    t_i = (sigma_max^(1/rho) + i / (N - 1) * (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,  t_N = 0
    x_0 ~ N(0, t_0^2 I);   d_i = (x_i - D(x_i; t_i)) / t_i;   x_{i+1} = x_i + (t_{i+1} - t_i) d_i
    Heun correction when t_{i+1} > 0:  x_{i+1} = x_i + (t_{i+1} - t_i) (d_i + d'_{i+1}) / 2

The mask of a sample is the mask head's argmax on the final (clean) image at `sigma_clean`: the pair
(x, y) is drawn from p(x) p(y | x), the joint the hybrid model learns.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import ops
from .config import Config, config_from_dict, validate
from .data.image_io import IMAGE_EXTENSIONS, FileProblem, normalize, read_image
from .objective import denoise, predict_logits
from .runtime.checkpoint import load_weights
from .runtime.distributed import pick_device
from .unet import UNet, build_unet, check_checkpoint_embedding

# Class k >= 1 is tinted with PALETTE[(k - 1) % len]; background stays untinted.
log = logging.getLogger("hybengine.predict")

PALETTE = np.array([[230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48], [145, 30, 180],
                    [70, 240, 240], [240, 50, 230], [210, 245, 60]], dtype=np.float32)
ALPHA = 0.45  # tint opacity in the overlay


def load_model(checkpoint: str, weights: str = "ema", device: torch.device | None = None):
    """(net in eval mode, its resolved Config) from a run or snapshot folder."""
    w = load_weights(checkpoint)
    check_checkpoint_embedding(w["config"], str(checkpoint))
    cfg = config_from_dict(w["config"])
    state = w["ema"] if weights == "ema" and w.get("ema") is not None else w["model"]
    device = device or pick_device(0)
    net = build_unet(cfg.model, cfg.data.image_channels, cfg.data.num_classes, ops.resolve_ops(cfg.kernels, device))
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


# ---------------------------------------------------------------------------------------------
# Prediction: Gaussian-blended tiles at the training crop (default), or the whole image at once

SIGMA_SCALE = 1 / 8  # Gaussian blending: sigma = tile / 8 (nnU-Net; MONAI's sigma_scale=0.125)
TTA_FLIPS = ((), (-1,), (-2,), (-2, -1))  # the image and its 3 mirrorings (nnU-Net's 2-D mirroring)


@dataclass(frozen=True)
class Prediction:
    """How masks are predicted, resolved for one model and device; result.json records it beside its Dice."""
    mode: str  # "tiled" or "whole"
    tile: int  # tile side in pixels (tiled), 0 for whole
    overlap: float
    batch_tiles: int
    tta: bool
    precision: str  # "fp32" or "bf16" (autocast)

    def describe(self) -> dict:
        return {**dataclasses.asdict(self), "blend_sigma": f"tile/{round(1 / SIGMA_SCALE)}" if self.tile else None}


def resolve_prediction(cfg: Config, net: UNet, device: torch.device | None = None) -> Prediction:
    """cfg.predict made concrete: the tile defaults to the model's training crop (cfg.data.crop, the
    checkpoint's own); precision auto = bf16 on CUDA, fp32 elsewhere. A tile the U-Net cannot take is refused."""
    p = cfg.predict
    device = device or next(net.parameters()).device
    precision = p.precision if p.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    tile = (p.tile or cfg.data.crop) if p.mode == "tiled" else 0
    f = net.downsample_factor
    if tile % f:
        raise ValueError(f"predict.tile={tile} must be a multiple of {f} (the U-Net halves the image "
                         f"{f.bit_length() - 1} times); e.g. predict.tile={max(f, tile // f * f)}")
    return Prediction(p.mode, tile, p.overlap, p.batch_tiles, p.tta, precision)


def gaussian_weights(tile: int) -> torch.Tensor:
    """(tile, tile) float32 blending weights, 1 at the centre, sigma = tile * SIGMA_SCALE along each axis.
    At the tile's edge (4 sigma) a weight is about 3e-4, at its corner 1e-7: small but never 0, so every
    pixel a tile covers has a defined average."""
    g = torch.exp(-0.5 * ((torch.arange(tile, dtype=torch.float32) - (tile - 1) / 2) / (tile * SIGMA_SCALE)) ** 2)
    w = g[:, None] * g[None, :]
    return w / w.max()


def tile_starts(size: int, tile: int, overlap: float) -> list[int]:
    """Where tiles start along a side of `size` >= tile pixels: the first at 0, the last flush with the
    edge, evenly spread, neighbours at most tile * (1 - overlap) apart (nnU-Net's step rule)."""
    if size <= tile:
        return [0]
    n = math.ceil((size - tile) / max(1.0, tile * (1 - overlap))) + 1
    return [round(i * (size - tile) / (n - 1)) for i in range(n)]


def batch_probs(net: UNet, x: torch.Tensor, sigma_clean: float, sigma_data: float, p: Prediction) -> torch.Tensor:
    """Softmax probabilities (B, K, h, w) float32 of a batch whose sides fit the net, averaged over
    TTA_FLIPS when p.tta (each flip undone before averaging)."""
    out = None
    for dims in TTA_FLIPS if p.tta else ((),):
        xi = x.flip(dims) if dims else x
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=p.precision == "bf16"):
            logits = predict_logits(net, xi, sigma_clean, sigma_data)
        probs = logits.float().softmax(dim=1)
        probs = probs.flip(dims) if dims else probs
        out = probs if out is None else out + probs
    return out / (len(TTA_FLIPS) if p.tta else 1)


@torch.no_grad()
def predict_probs(net: UNet, image: torch.Tensor, cfg: Config, p: Prediction,
                  on_tiles: Callable[[int], None] | None = None) -> torch.Tensor:
    """Class probabilities (K, H, W) float32 of one normalised image (C, H, W), on the net's device.

    tiled: the image (mirror-padded to at least one tile) is cut into overlapping tiles at p.tile,
    predicted p.batch_tiles at a time, and each tile's probabilities are added into one (K, H, W) sum
    weighted by `gaussian_weights`, then divided by the summed weights. Memory is the image, that sum
    and one batch of tiles, whatever the image size. whole: one forward pass over the padded image.
    `on_tiles(n)` is called after each batch of n tiles (progress bars)."""
    device = next(net.parameters()).device
    o = cfg.objective
    x = image.to(device=device, dtype=torch.float32)
    H, W = x.shape[-2:]
    if p.mode == "whole":
        probs = batch_probs(net, pad_to_multiple(x[None], net.downsample_factor), o.sigma_clean, o.sigma_data, p)
        if on_tiles:
            on_tiles(1)
        return probs[0, :, :H, :W]
    t = p.tile
    x = pad_to_size(x, max(H, t), max(W, t))
    corners = [(i, j) for i in tile_starts(x.shape[-2], t, p.overlap) for j in tile_starts(x.shape[-1], t, p.overlap)]
    weights = gaussian_weights(t).to(device)
    total = weight_sum = None
    for b in range(0, len(corners), p.batch_tiles):
        batch = corners[b:b + p.batch_tiles]
        tiles = torch.stack([x[:, i:i + t, j:j + t] for i, j in batch])
        probs = batch_probs(net, tiles, o.sigma_clean, o.sigma_data, p)
        if total is None:
            total = torch.zeros((probs.shape[1], *x.shape[-2:]), device=device)
            weight_sum = torch.zeros(x.shape[-2:], device=device)
        for (i, j), tile_probs in zip(batch, probs, strict=True):
            total[:, i:i + t, j:j + t] += tile_probs * weights
            weight_sum[i:i + t, j:j + t] += weights
        if on_tiles:
            on_tiles(len(batch))
    return total.div_(weight_sum)[:, :H, :W]


def count_tiles(height: int, width: int, p: Prediction) -> int:
    """Forward-pass tiles one image of this size takes (1 for whole-image prediction)."""
    if p.mode == "whole":
        return 1
    return len(tile_starts(max(height, p.tile), p.tile, p.overlap)) * len(tile_starts(max(width, p.tile), p.tile,
                                                                                       p.overlap))


def predict_file(net: UNet, cfg: Config, path: Path, p: Prediction,
                 on_tiles: Callable[[int], None] | None = None) -> tuple[np.ndarray, torch.Tensor]:
    """(normalised image (C, H, W), class probabilities (K, H, W)) of one image file, normalised as the
    checkpoint's training normalised (cfg.data.normalize)."""
    raw, dtype_max = read_image(path, cfg.data.image_channels)
    image = normalize(raw, cfg.data.normalize, dtype_max)
    return image, predict_probs(net, torch.from_numpy(image), cfg, p, on_tiles)


def save_probs(probs: np.ndarray, out: Path, stem: str, formats: tuple[str, ...]) -> None:
    """(K, H, W) float32 probabilities -> <stem>_probs.npy and/or <stem>_probs.tif (axes CYX)."""
    if "npy" in formats:
        np.save(out / f"{stem}_probs.npy", probs)
    if "tiff" in formats:
        import tifffile

        tifffile.imwrite(out / f"{stem}_probs.tif", probs, metadata={"axes": "CYX"})


def predict_folder(checkpoint: str, images: str | Path, out: str | Path, weights: str = "ema",
                   overrides: dict | None = None, device: str | None = None, probs_formats: tuple[str, ...] = (),
                   progress: bool = True) -> list[str]:
    """Writes a mask and an overlay (and probabilities, if asked) per image; returns the problems
    (file: reason) met on the way. `overrides`: PredictConfig fields over the defaults."""
    try:
        dev = torch.device(device) if device else None
    except RuntimeError as e:
        raise ValueError(f"--device {device!r}: {e}; e.g. cpu, cuda, cuda:1") from e
    net, cfg = load_model(checkpoint, weights, dev)
    cfg = dataclasses.replace(cfg, predict=dataclasses.replace(cfg.predict, **(overrides or {})))
    validate(cfg)
    p = resolve_prediction(cfg, net)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(q for q in Path(images).iterdir()
                   if q.is_file() and not q.name.startswith(".") and q.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        return [f"{images}: no images ({' '.join(IMAGE_EXTENSIONS)})"]
    problems = []
    tiles, t0 = 0, time.perf_counter()
    with _progress_bar(progress, len(files)) as advance:
        for path in files:
            try:
                image, probs = predict_file(net, cfg, path, p, on_tiles=lambda n: advance(0, n))
                probs = probs.cpu().numpy()
                mask = probs.argmax(0).astype(np.uint8)
                Image.fromarray(mask, mode="L").save(out / f"{path.stem}_mask.png")
                Image.fromarray(overlay(to_display(image), mask), mode="RGB").save(out / f"{path.stem}_overlay.png")
                save_probs(probs, out, path.stem, probs_formats)
                tiles += count_tiles(*image.shape[-2:], p)
            except (FileProblem, ValueError, RuntimeError, OSError) as e:  # this file only; the rest are written
                problems.append(f"{path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
            advance(1, 0)
    seconds = time.perf_counter() - t0
    log.info("predicted %d of %d images (%s) in %.1f s: %d tiles, %.1f tiles/s", len(files) - len(problems),
             len(files), ", ".join(f"{k}={v}" for k, v in p.describe().items()), seconds, tiles,
             tiles / max(seconds, 1e-9))
    return problems


@contextmanager
def _progress_bar(show: bool, files: int):
    """Yields advance(files, tiles): a rich bar over the files with a tile count, drawn on a terminal only."""
    if not (show and sys.stderr.isatty()):
        yield lambda files, tiles: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("[bold]predict"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[tiles]} tiles"), TimeRemainingColumn(), console=Console(stderr=True))
    task = bar.add_task("predict", total=files, tiles=0)
    count = [0]

    def advance(n_files: int, n_tiles: int) -> None:
        count[0] += n_tiles
        bar.update(task, advance=n_files, tiles=count[0])

    with bar:
        yield advance


def pad_to_size(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(..., h, w) -> bottom/right padded to (height, width) >= (h, w), mirrored as `pad_to_multiple` pads."""
    for dim, target in ((-2, height), (-1, width)):
        while x.shape[dim] < target:
            side = x.shape[dim]
            chunk = target - side if side == 1 else min(target - side, side - 1)
            pad = (0, 0, 0, chunk) if dim == -2 else (0, chunk, 0, 0)
            x = F.pad(x, pad, mode="replicate" if side == 1 else "reflect")
    return x


def pad_to_multiple(x: torch.Tensor, f: int) -> torch.Tensor:
    """(..., H, W) -> bottom/right padded to multiples of f, as the augmentation pads a small file:
    mirrored (repeatedly, when the pad exceeds the side, like numpy's reflect), edge-repeated along a
    side of one pixel, where there is nothing to mirror."""
    H, W = x.shape[-2:]
    return pad_to_size(x, H + (-H) % f, W + (-W) % f)


def predict_padded(net: UNet, x: torch.Tensor, sigma_clean: float, sigma_data: float) -> torch.Tensor:
    """Mask logits for images of any size (1 x 1 included): pad to the net's multiple, predict, crop back."""
    H, W = x.shape[-2:]
    xp = pad_to_multiple(x, net.downsample_factor)
    return predict_logits(net, xp, sigma_clean, sigma_data)[..., :H, :W].float()


def noise_levels(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                 device: torch.device | None = None) -> torch.Tensor:
    """(steps + 1,) float64: t_0 = sigma_max > ... > t_{steps-1} = sigma_min, t_steps = 0."""
    i = torch.arange(steps, dtype=torch.float64, device=device)
    t = (sigma_max ** (1 / rho) + i / max(steps - 1, 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([t, torch.zeros(1, dtype=torch.float64, device=device)])


@torch.no_grad()
def sample_pairs(net, n: int, image_channels: int, size: int, sigma_data: float, sigma_clean: float,
                 steps: int = 18, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """n joint samples: (images (n, I, size, size) float32, masks (n, size, size) int64)."""
    device = next(net.parameters()).device
    t = noise_levels(steps, sigma_min, sigma_max, rho).tolist()
    x = torch.randn((n, image_channels, size, size), generator=generator).to(device) * t[0]
    for i in range(steps):
        d = (x - denoise(net, x, t[i], sigma_data)) / t[i]
        x_next = x + (t[i + 1] - t[i]) * d
        if t[i + 1] > 0:  # Heun's second-order correction
            d_next = (x_next - denoise(net, x_next, t[i + 1], sigma_data)) / t[i + 1]
            x_next = x + (t[i + 1] - t[i]) * (d + d_next) / 2
        x = x_next
    masks = predict_logits(net, x, sigma_clean, sigma_data).argmax(dim=1)
    return x.float(), masks


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
