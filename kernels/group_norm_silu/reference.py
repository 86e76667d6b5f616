"""Pure-PyTorch reference for the fused GroupNorm + affine + modulation + SiLU op.

    mean_g, var_g = statistics of x over (C/G channels of group g, H, W)   (fp32 or wider)
    xhat  = (x - mean_g) * rstd_g,        rstd_g = 1 / sqrt(var_g + eps)
    h     = xhat * weight_c + bias_c
    h     = h * (1 + scale_nc) + shift_nc                                  (optional modulation)
    y     = silu(h) = h * sigmoid(h)

Gradients come from autograd. Tests and benchmarks judge the fused kernels against this; the
engine runs it wherever no fused path exists.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def group_norm_silu_reference(
    x: torch.Tensor,  # (N, C, H, W), any memory format
    weight: torch.Tensor,  # (C,)
    bias: torch.Tensor,  # (C,)
    groups: int,
    eps: float = 1e-5,
    scale: torch.Tensor | None = None,  # (N, C) or None
    shift: torch.Tensor | None = None,  # (N, C) or None
) -> torch.Tensor:
    """Returns y with x's dtype; statistics and arithmetic in fp32 (fp64 for fp64 inputs)."""
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    h = F.group_norm(x.to(compute), groups, weight.to(compute), bias.to(compute), eps)
    if scale is not None:
        h = h * (1 + scale.to(compute)[:, :, None, None])
    if shift is not None:
        h = h + shift.to(compute)[:, :, None, None]
    return F.silu(h).to(x.dtype)
