"""fp32 results judged against a float64 reference with a tolerance that scales with the reduction
(imported by tests, not collected).

A sum of L products computed in fp32 in any order (blocked, vectorised with AVX2 or AVX-512,
pairwise...) differs from the exact sum by at most about sqrt(L) * eps32 * sum |terms| for the
random-signed inputs tests use (worst case L * eps32 * ...; the sqrt(L) growth of rounding errors
that are not correlated). The per-element scale sum |terms| of a bilinear op (a convolution and
its gradients) is the same op applied to |inputs|, computed in float64. So the check is independent
of the CPU's instruction set and of the summation order a library picks, and still tight: far below
what a wrong tap or index would cost.
"""
from __future__ import annotations

import math

import torch

EPS32 = torch.finfo(torch.float32).eps


def assert_close_fp32(actual: torch.Tensor, exact: torch.Tensor, scale: torch.Tensor, length: int,
                      factor: float = 4.0, name: str = "") -> None:
    """|actual - exact| <= factor * sqrt(length) * eps32 * scale + tiny, element-wise; `exact` and
    `scale` (sum of |terms| per element) in float64, `length` the number of terms per element."""
    assert exact.dtype == scale.dtype == torch.float64
    bound = factor * math.sqrt(length) * EPS32 * scale + 1e-30
    err = (actual.double() - exact).abs()
    worst = (err / bound).max().item()
    assert worst <= 1.0, (f"{name}: fp32 error {err.max().item():.3g} is {worst:.2f}x the bound "
                          f"({factor} sqrt({length}) eps32 sum|terms|)")
