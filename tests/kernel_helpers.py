"""Helpers for the kernel tests (no tests here): judging low-precision results against float64.

A result passes when its max error against the float64 reference is within a few times the error
PyTorch itself makes on the same rounded inputs (its reference run in that dtype), with a floor of
a few units in the last place at the reference's scale.
"""
import torch

FLOOR_ULPS = 8  # ulps at the reference's largest magnitude
TORCH_FACTOR = 4  # times PyTorch's own error on the same inputs


def max_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return (a.double() - ref.double()).abs().max().item() if ref.numel() else 0.0


def assert_matches(name: str, ours: torch.Tensor, ref64: torch.Tensor, torch_lowp: torch.Tensor | None,
                   dtype: torch.dtype) -> None:
    """ours (computed in `dtype`) against the float64 reference, allowing PyTorch's own error."""
    assert ours.shape == ref64.shape, f"{name}: shape {tuple(ours.shape)} != {tuple(ref64.shape)}"
    assert torch.isfinite(ours).all(), f"{name}: non-finite values"
    scale = ref64.abs().max().item() if ref64.numel() else 0.0
    tol = FLOOR_ULPS * torch.finfo(dtype).eps * max(scale, 1e-6)
    if torch_lowp is not None:
        tol = max(tol, TORCH_FACTOR * max_err(torch_lowp, ref64))
    err = max_err(ours, ref64)
    assert err <= tol, f"{name}: max error {err:.3e} > tolerance {tol:.3e} (reference max |.| {scale:.3e})"


def shifted(*shape: int, generator: torch.Generator) -> torch.Tensor:
    """-2.3 + 0.5*randn in float64: a large mean exposes E[x^2]-E[x]^2 cancellation."""
    return -2.3 + 0.5 * torch.randn(*shape, generator=generator, dtype=torch.float64)
