"""Pure-PyTorch reference for the joint denoise + segmentation loss (per-sample terms).

With I image channels and K classes, F = (B, I+K, H, W) is the raw U-Net output:

    D_x_b      = c_skip_b * x_n_b + c_out_b * F_b[:I]                    (EDM preconditioning)
    denoise_b  = lam_b * mean_{c<I, pixels} (D_x_b - x_b)^2
    mask_b     = w_mask * sum_{valid p} CE(F_b[I:, p], y_b[p]) / max(1, #valid_b)
                 valid p: y_b[p] != ignore_index

Both terms are fp32 (fp64 for fp64 inputs), shape (B,). The denoise term depends only on
F[:, :I] and the mask term only on F[:, I:], which is what lets the fused kernel write dF once.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def hybrid_loss_reference(
    out: torch.Tensor,  # F: (B, I+K, H, W) network output
    x_n: torch.Tensor,  # (B, I, H, W) noisy image
    x: torch.Tensor,  # (B, I, H, W) clean image
    y: torch.Tensor,  # (B, H, W) int64 class indices
    c_skip: torch.Tensor,  # (B,)
    c_out: torch.Tensor,  # (B,)
    lam: torch.Tensor,  # (B,) EDM loss weight lambda(sigma)
    w_mask: float,
    ignore_index: int = -100,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (denoise, mask), each (B,)."""
    compute = torch.float64 if out.dtype == torch.float64 else torch.float32
    n_img = x.shape[1]
    Fc = out.to(compute)
    bcast = (-1, 1, 1, 1)
    D_x = c_skip.to(compute).view(bcast) * x_n.to(compute) + c_out.to(compute).view(bcast) * Fc[:, :n_img]
    denoise = lam.to(compute) * (D_x - x.to(compute)).square().mean(dim=(1, 2, 3))
    ce = F.cross_entropy(Fc[:, n_img:], y, ignore_index=ignore_index, reduction="none")  # (B, H, W)
    n_valid = (y != ignore_index).sum(dim=(1, 2)).clamp(min=1).to(compute)
    mask = w_mask * ce.sum(dim=(1, 2)) / n_valid
    return denoise, mask
