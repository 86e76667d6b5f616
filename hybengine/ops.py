"""Op dispatch: the configuration resolved, once per run, into the ops a model and objective run.

    ops = resolve_ops(cfg.kernels, device)          # an immutable `Ops`; log_ops(ops) logs it once
    net = build_unet(cfg.model, I, K, ops=ops)       # GroupNorm-SiLU and upsample conv
    objective = HybridObjective(cfg.objective, ignore_index, ops=ops)   # the joint loss

`Ops` holds one callable per op (`group_norm_silu`, `hybrid_loss`, `upsample_conv`) and what was
chosen and why. The U-Net and the objective keep the `Ops` they were built with as a plain
attribute (which torch.compile traces through) and read nothing else, so two models built with
different choices run side by side in one process; to change a model's ops, build it again. Without
`ops=` they run `REFERENCE`, the pure-PyTorch references.

Each op has a reference and one fast form, "fused" (the Triton custom ops of kernels/) or, for the
upsample conv, "subpixel" (kernels/upsample_conv.py); the config picks reference, the fast form or
auto. For a fused op the body inside it (Triton, the interpreter, native C++, math) is resolved here
too (kernels/bodies.resolve_body) and bound to the op with functools.partial, with the config's
Triton design. Environment overrides of the bodies are read in one place, kernels/bodies.environment
(HYBENGINE_CPU_BACKEND, HYBENGINE_NATIVE, HYBENGINE_NATIVE_LIB), called from `resolve_ops` only;
tests pass an `Environment` instead.

`auto` choices, and why (figures: docs/performance.md, from benchmarks/results/):
- CUDA: the fused Triton ops. Side by side in one bench_train.py invocation, the compiled U-Net
  trained faster with them than without on an H200 and broke even on an H100 ("Training step").
- CPU: the fused op where its CPU body is the native C++ kernel, else the reference: the Triton
  interpreter (tests only, about 2 M elements/s) and the plain-torch math body never beat eager ATen.
  The native body beats both eager and torch.compile of the reference, NCHW and channels-last, at
  the tiny preset's shapes ("GroupNorm-SiLU kernel").
- `upsample_conv` (the U-Net's nearest-2x upsample + 3x3 conv): CPU, the sub-pixel form (2.25x
  fewer convolution FLOPs, the same function; faster at the tiny preset's shapes and in the real
  training loop, paired in lockstep: "Upsample conv", docs/lab/cpu-bound.md). CUDA keeps the
  reference until the form is timed there (bench_train.py --configs engine engine-upsample-subpixel).
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .config import KernelConfig
from .kernels import bodies
from .kernels import group_norm_silu as fused_group_norm_silu
from .kernels import hybrid_loss as fused_hybrid_loss
from .kernels.bodies import Environment
from .kernels.group_norm_silu import group_norm_silu_reference
from .kernels.hybrid_loss_reference import hybrid_loss_reference
from .kernels.upsample_conv import upsample_conv_reference, upsample_conv_subpixel

log = logging.getLogger("hybengine.ops")


@dataclass(frozen=True)
class OpForm:
    """An op's two implementations: the reference and its fast form (named as the config names it)."""

    reference: Callable
    fast: Callable
    fast_name: str  # "fused" (kernels/ custom op, with a body) or "subpixel"


# Every op, registered alike: read-only after import.
FORMS: dict[str, OpForm] = {
    "group_norm_silu": OpForm(group_norm_silu_reference, fused_group_norm_silu, "fused"),
    "hybrid_loss": OpForm(hybrid_loss_reference, fused_hybrid_loss, "fused"),
    "upsample_conv": OpForm(upsample_conv_reference, upsample_conv_subpixel, "subpixel"),
}


@dataclass(frozen=True)
class Choice:
    """What runs one op: the path ("reference", "fused", "subpixel"), the fused op's body and why."""

    op: str
    path: str
    body: str  # bodies.BODIES for a fused op, "-" otherwise
    reason: str

    def __str__(self) -> str:
        body = f" ({self.body})" if self.body != "-" else ""
        return f"{self.op}: {self.path}{body}, {self.reason}"


@dataclass(frozen=True)
class Ops:
    """The ops one model and objective run (see the module docstring). Signatures:

    group_norm_silu(x, weight, bias, groups, eps, scale=None, shift=None)   x (N,C,H,W), scale/shift (N,C)
    hybrid_loss(out, x_n, x, y, c_skip, c_out, lam, w_mask, ignore_index)  -> (denoise, mask), each (B,)
    upsample_conv(x, weight, bias)          conv3x3(nearest 2x upsample of x), padding 1: (N,C,H,W) -> (N,O,2H,2W)
    """

    group_norm_silu: Callable
    hybrid_loss: Callable
    upsample_conv: Callable
    choices: tuple[Choice, ...]
    device: str = "cpu"

    def chosen(self) -> dict[str, str]:
        """{op: path}, e.g. for the run log and TrainResult."""
        return {c.op: c.path for c in self.choices}

    def choice(self, op: str) -> Choice:
        return next(c for c in self.choices if c.op == op)


REFERENCE = Ops(group_norm_silu_reference, hybrid_loss_reference, upsample_conv_reference,
                tuple(Choice(op, "reference", "-", "default (no ops given)") for op in FORMS))


def resolve(name: str, choice: str, device: torch.device, env: Environment = bodies.NO_OVERRIDES) -> Choice:
    """What op `name` runs under the config `choice` ("auto", "reference" or its fast form) on `device`."""
    form = FORMS[name]
    if choice not in ("auto", "reference", form.fast_name):
        raise ValueError(f"kernels.{name}={choice!r}: expected auto, reference or {form.fast_name}")
    if choice == "reference":
        return Choice(name, "reference", "-", "asked for in the config")
    if form.fast_name != "fused":  # upsample_conv: plain torch either way, no body to pick
        if choice == form.fast_name:
            return Choice(name, choice, "-", "asked for in the config")
        if device.type == "cuda":
            return Choice(name, "reference", "-", "auto: the sub-pixel form is not yet timed on CUDA")
        return Choice(name, "subpixel", "-", "auto: sub-pixel form, 2.25x fewer conv FLOPs, measured faster on CPU")
    body, body_why = bodies.resolve_body(name, device.type, env)
    if choice == "fused":
        return Choice(name, "fused", body, f"asked for in the config (body: {body_why})")
    if device.type == "cuda":
        if body == "math":
            return Choice(name, "reference", "-", "auto: fused op unavailable (is triton installed?)")
        return Choice(name, "fused", body, "auto: fused Triton op on CUDA")
    if body == "native":
        return Choice(name, "fused", body, "auto: native C++ CPU kernels, measured faster than eager and torch.compile")
    return Choice(name, "reference", "-",
                  f"auto: the fused op's CPU body here is {body} ({body_why}); the eager ATen reference is faster")


def resolve_ops(cfg: KernelConfig, device: torch.device | str, env: Environment | None = None) -> Ops:
    """The ops `cfg` resolves to on `device`, bound and frozen. `env`: the body overrides; None reads
    them from the environment (kernels/bodies.environment, the one place that does)."""
    device = torch.device(device)
    env = bodies.environment() if env is None else env
    choices, impls = [], {}
    for name, form in FORMS.items():
        c = resolve(name, getattr(cfg, name), device, env)
        impl = form.reference if c.path == "reference" else form.fast
        if c.body != "-":
            bodies.check_body(name, c.body)
            extra = {"design": cfg.group_norm_silu_channels_last} if name == "group_norm_silu" else {}
            impl = functools.partial(impl, body=c.body, **extra)
        choices.append(c)
        impls[name] = impl
    return Ops(**impls, choices=tuple(choices), device=device.type)


def log_ops(ops: Ops) -> None:
    """One line per op: what runs and why (the training loop calls it once per run); on CUDA also the
    Triton design the fused GroupNorm-SiLU was bound to."""
    for c in ops.choices:
        log.info("op %s on %s: %s", c.op, ops.device, c)
    if ops.choice("group_norm_silu").body.startswith("triton") and ops.device == "cuda":
        from .kernels.group_norm_silu.design import DEFAULT_DESIGN

        design = ops.group_norm_silu.keywords["design"]
        log.info("group_norm_silu Triton design on CUDA: %s (%s)", DEFAULT_DESIGN if design == "auto" else design,
                 design)
