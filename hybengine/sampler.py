"""EDM sampler (Karras et al. 2022, Algorithm 1: deterministic Heun) for joint (image, mask) pairs.

Noise levels, i = 0..N-1, then t_N = 0:
    t_i = (sigma_max^(1/rho) + i / (N - 1) * (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho
    x_0 ~ N(0, t_0^2 I);   d_i = (x_i - D(x_i; t_i)) / t_i;   x_{i+1} = x_i + (t_{i+1} - t_i) d_i
    Heun correction when t_{i+1} > 0:  x_{i+1} = x_i + (t_{i+1} - t_i) (d_i + d'_{i+1}) / 2
D(x; sigma) = c_skip x + c_out F[:, :I] is the hybrid model's denoiser (hybengine/objective.py).
The mask of a sample is the mask head's argmax on the final (clean) image at `sigma_clean`, the
prediction convention: the pair (x, y) is drawn from p(x) p(y | x), the joint the hybrid model learns.
"""
from __future__ import annotations

import torch

from .objective import edm_precond, predict_logits


def noise_levels(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                 device: torch.device | None = None) -> torch.Tensor:
    """(steps + 1,) float64: t_0 = sigma_max > ... > t_{steps-1} = sigma_min, t_steps = 0."""
    i = torch.arange(steps, dtype=torch.float64, device=device)
    t = (sigma_max ** (1 / rho) + i / max(steps - 1, 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([t, torch.zeros(1, dtype=torch.float64, device=device)])


def denoise(net, x: torch.Tensor, sigma: float, sigma_data: float) -> torch.Tensor:
    """D(x; sigma) for a batch x (B, I, H, W) at one noise level."""
    s = torch.full((x.shape[0],), sigma, device=x.device, dtype=torch.float32)
    c_skip, c_out, c_in, c_noise, _ = edm_precond(s, sigma_data)
    F = net(c_in.view(-1, 1, 1, 1) * x, c_noise)
    return c_skip.view(-1, 1, 1, 1) * x + c_out.view(-1, 1, 1, 1) * F[:, :x.shape[1]].float()


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
