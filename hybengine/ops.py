"""Op dispatch: the one place that picks, per op and device, the fused op or its reference.

The U-Net and the objective call `group_norm_silu`, `upsample_conv` and `hybrid_loss` from here and
nowhere else.
`configure` resolves each op once per run (before any compile) and logs the path it took, so the
hot path is a plain dictionary lookup that torch.compile traces through. `using(...)` does the same
for a block and restores what was in force (benchmarks, tests). These two are the only writers of
the op table (its fused GroupNorm-SiLU entry carries the config's Triton design as an argument);
inside a fused op, kernels/bodies.py picks the body per device (Triton, the interpreter, native C++, math).

`auto` choices, and why (figures: docs/performance.md, from benchmarks/results/):
- CUDA: the fused Triton ops. Side by side in one bench_train.py invocation, the compiled U-Net
  trained faster with them than without on an H200 and broke even on an H100 ("Training step").
- CPU: the fused op where its CPU body is the native C++ kernel (see `resolve`), else the
  reference: the Triton interpreter (tests only, about 2 M elements/s) and the plain-torch math
  body never beat eager ATen.
- `upsample_conv` (the U-Net's nearest-2x upsample + 3x3 conv): CPU, the sub-pixel form
  (kernels/upsample_conv.py, 2.25x fewer convolution FLOPs, the same function); see
  `resolve_upsample_conv`. CUDA keeps the reference until the form is timed there
  (bench_train.py --configs engine engine-upsample-subpixel).
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import torch

from .config import KernelConfig
from .kernels import group_norm_silu_reference, hybrid_loss_reference
from .kernels.upsample_conv import upsample_conv_reference, upsample_conv_subpixel

log = logging.getLogger("hybengine.ops")

_REFERENCE: dict[str, Callable] = {
    "group_norm_silu": group_norm_silu_reference,
    "hybrid_loss": hybrid_loss_reference,
}
_IMPL: dict[str, Callable] = dict(_REFERENCE)
_CHOSEN: dict[str, str] = {name: "reference" for name in _REFERENCE}
_UPSAMPLE_CONV: dict[str, Callable] = {"reference": upsample_conv_reference, "subpixel": upsample_conv_subpixel}
_IMPL["upsample_conv"], _CHOSEN["upsample_conv"] = upsample_conv_reference, "reference"


def _fused(name: str) -> Callable | None:
    try:
        from . import kernels
    except ImportError:  # pragma: no cover - kernels is part of this package
        return None
    return getattr(kernels, name, None)


def _cpu_fused_body() -> str:
    try:
        from .kernels.bodies import op_backends
    except ImportError:
        return "unavailable"
    return str(op_backends().get("group_norm_silu", {}).get("cpu", "unknown"))


def resolve(name: str, choice: str, device: torch.device) -> tuple[str, str]:
    """Returns (path, reason) for op `name` under the config choice on `device`.

    CPU `auto`: the fused op where its CPU body is the native C++ kernel (kernels/native), else
    the reference. The native body beats both eager and torch.compile of the reference, NCHW and
    channels-last, at the tiny preset's shapes (docs/performance.md, "GroupNorm-SiLU kernel"); the
    Triton interpreter and the math body never beat eager ATen.
    """
    fused = _fused(name)
    if choice == "reference":
        return "reference", "asked for in the config"
    if choice == "fused":
        if fused is None:
            return "reference", "fused op not importable; falling back to the reference"
        return "fused", "asked for in the config" + (
            f" (CPU body: {_cpu_fused_body()})" if device.type == "cpu" else ""
        )
    if device.type == "cuda" and fused is not None:
        return "fused", "auto: fused Triton op on CUDA"
    if device.type == "cuda":
        return "reference", "auto: fused op unavailable (is triton installed?)"
    from .kernels.bodies import op_backends

    body = op_backends().get(name, {}).get("cpu", "unknown")
    if body == "native" and fused is not None:
        return "fused", "auto: native C++ CPU kernels, measured faster than eager and torch.compile"
    return "reference", f"auto: the fused op's CPU body here is {body}; the eager ATen reference is faster"


def resolve_upsample_conv(choice: str, device: torch.device) -> tuple[str, str]:
    """Returns (path, reason) for the upsample + 3x3 conv: "subpixel" or "reference".

    CPU `auto`: subpixel: faster than upsample-then-conv at the tiny preset's Upsample shapes, and
    in the real training loop, paired in lockstep with the same engine using the reference
    (docs/performance.md, "Upsample conv"; docs/lab/cpu-bound.md, "The sub-pixel upsample conv").
    CUDA `auto`: the reference, until the sub-pixel form has been timed on a GPU.
    """
    if choice != "auto":
        return choice, "asked for in the config"
    if device.type == "cuda":
        return "reference", "auto: the sub-pixel form is not yet timed on CUDA"
    return "subpixel", "auto: sub-pixel form, 2.25x fewer conv FLOPs, measured faster on CPU"


def configure(cfg: KernelConfig, device: torch.device, *, quiet: bool = False) -> dict[str, str]:
    """Resolves every op for this run, logs the choice (unless `quiet`), and returns {op: path}.

    This and `using` are the only writers of the op table; the fused GroupNorm-SiLU entry carries the
    config's Triton design (kernels.group_norm_silu_channels_last) as an argument."""
    emit = (lambda *a: None) if quiet else log.info
    design = cfg.group_norm_silu_channels_last  # the Triton design, an argument of the fused op
    for name in _REFERENCE:
        path, reason = resolve(name, getattr(cfg, name), device)
        fused = _fused(name) if path == "fused" else None
        if fused is not None and name == "group_norm_silu":
            fused = functools.partial(fused, design=design)
        _IMPL[name] = fused if fused is not None else _REFERENCE[name]
        _CHOSEN[name] = path
        emit("op %s on %s: %s (%s)", name, device.type, path, reason)
    path, reason = resolve_upsample_conv(cfg.upsample_conv, device)
    _IMPL["upsample_conv"], _CHOSEN["upsample_conv"] = _UPSAMPLE_CONV[path], path
    emit("op upsample_conv on %s: %s (%s)", device.type, path, reason)
    if _CHOSEN["group_norm_silu"] == "fused" and device.type == "cuda":
        from .kernels.group_norm_silu.design import DEFAULT_DESIGN

        emit("group_norm_silu Triton design on CUDA: %s (%s)", DEFAULT_DESIGN if design == "auto" else design,
             design)
    return dict(_CHOSEN)


def chosen() -> dict[str, str]:
    """{op: path} in force now."""
    return dict(_CHOSEN)


@contextmanager
def using(cfg: KernelConfig | None = None, device: torch.device | str = "cpu", *, cpu_body: str | None = None,
          quiet: bool = True) -> Iterator[dict[str, str]]:
    """For a block (benchmarks, tests): the ops `cfg` resolves to on `device` and, with `cpu_body`,
    the fused ops' CPU body forced ("native", "math", "triton-interpreter"; kernels/bodies.py).
    Everything in force before comes back after the block. Yields {op: path}."""
    from .kernels import bodies

    saved = dict(_IMPL), dict(_CHOSEN)
    try:
        if cfg is not None:
            configure(cfg, torch.device(device), quiet=quiet)
        with bodies.cpu_backend(cpu_body) if cpu_body else nullcontext():
            yield dict(_CHOSEN)
    finally:
        _IMPL.clear()
        _IMPL.update(saved[0])
        _CHOSEN.clear()
        _CHOSEN.update(saved[1])


def group_norm_silu(x, weight, bias, groups: int, eps: float, scale=None, shift=None) -> torch.Tensor:
    """GroupNorm + affine + optional `h*(1+scale)+shift` + SiLU; x (N,C,H,W), scale/shift (N,C)."""
    return _IMPL["group_norm_silu"](x, weight, bias, groups, eps, scale, shift)


def upsample_conv(x, weight, bias) -> torch.Tensor:
    """conv3x3(nearest 2x upsample of x), padding 1; x (N,C,H,W) -> (N,O,2H,2W)."""
    return _IMPL["upsample_conv"](x, weight, bias)


def hybrid_loss(out, x_n, x, y, c_skip, c_out, lam, w_mask: float, ignore_index: int):
    """Per-sample (denoise, mask) terms of the joint objective; see kernels/hybrid_loss_reference."""
    return _IMPL["hybrid_loss"](out, x_n, x, y, c_skip, c_out, lam, w_mask, ignore_index)
