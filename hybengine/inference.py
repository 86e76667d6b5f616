"""Inference without the training loop: load a trained model, predict masks, draw joint samples.

Used by the `predict` and `sample` entry points and by fine-tune evaluation. Predictions are made
whole at the fixed clean noise level `objective.sigma_clean` (padded to the U-Net's multiple),
the convention fine-tuning trains at. The sampler is EDM's deterministic Heun sampler (Karras et al.
2022, Algorithm 1) over the hybrid model's denoiser D(x; sigma) (hybengine/objective.py):

    t_i = (sigma_max^(1/rho) + i / (N - 1) * (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,  t_N = 0
    x_0 ~ N(0, t_0^2 I);   d_i = (x_i - D(x_i; t_i)) / t_i;   x_{i+1} = x_i + (t_{i+1} - t_i) d_i
    Heun correction when t_{i+1} > 0:  x_{i+1} = x_i + (t_{i+1} - t_i) (d_i + d'_{i+1}) / 2

The mask of a sample is the mask head's argmax on the final (clean) image at `sigma_clean`: the pair
(x, y) is drawn from p(x) p(y | x), the joint the hybrid model learns.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import ops
from .config import config_from_dict
from .data.image_io import IMAGE_EXTENSIONS, FileProblem, normalize, read_image
from .objective import denoise, predict_logits
from .runtime.checkpoint import load_weights
from .runtime.distributed import pick_device
from .unet import UNet, build_unet, check_checkpoint_embedding

# Class k >= 1 is tinted with PALETTE[(k - 1) % len]; background stays untinted.
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
            Image.fromarray(mask, mode="L").save(out / f"{path.stem}_mask.png")
            Image.fromarray(overlay(to_display(image), mask), mode="RGB").save(out / f"{path.stem}_overlay.png")
        except (FileProblem, ValueError, RuntimeError, OSError) as e:  # this file only; the rest are written
            problems.append(f"{path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    return problems


def pad_to_multiple(x: torch.Tensor, f: int) -> torch.Tensor:
    """(..., H, W) -> bottom/right padded to multiples of f, as the augmentation pads a small file:
    mirrored (repeatedly, when the pad exceeds the side, like numpy's reflect), edge-repeated along a
    side of one pixel, where there is nothing to mirror."""
    for dim in (-2, -1):
        need = (-x.shape[dim]) % f
        while need:
            side = x.shape[dim]
            chunk = need if side == 1 else min(need, side - 1)
            pad = (0, 0, 0, chunk) if dim == -2 else (0, chunk, 0, 0)
            x = F.pad(x, pad, mode="replicate" if side == 1 else "reflect")
            need -= chunk
    return x


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
