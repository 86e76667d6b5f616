"""Which body runs a fused op, and the optional Triton import.

Every fused op (`group_norm_silu`, `hybrid_loss`) is one `torch.library.custom_op` whose body is one
of these, named by a string argument of the op (`body=`), so a compiled graph holds the choice as a
constant and nothing is read from a module table:

    "triton"              Triton kernels compiled for the GPU
    "triton-interpreter"  the same Triton kernels run on CPU tensors by the interpreter, when
                          TRITON_INTERPRET=1 was set before `hybengine.kernels` was imported and
                          triton imports (how CI tests the kernels; Triton's own variable)
    "native"              the C++ CPU kernels of kernels/native, where the library was built
    "math"                plain PyTorch that computes the same forward and backward formulas
                          explicitly (no autograd); runs wherever Triton cannot
    "auto"                the default order for the tensor's device: CUDA triton (math without
                          triton); CPU triton-interpreter, native, math, the first available

`resolve_body` picks the body of one op on one device for a run (hybengine.ops.resolve_ops calls it
once and binds the answer to the op with functools.partial); `environment()` is the one place that
reads the environment overrides (HYBENGINE_CPU_BACKEND, HYBENGINE_NATIVE, HYBENGINE_NATIVE_LIB), and
only a resolve calls it. float64 inputs always take "math" (the Triton kernels compute in fp32).

Triton is optional: when it does not import, `triton` and `tl` below are stand-ins that let the
kernel files define their kernels (calling one raises) so `import hybengine.kernels` still works.
Kernels are decorated when their file is imported, so TRITON_INTERPRET must be set before that.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from . import native

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # CPU-only install without triton: every op takes the math path

    class _TritonMissing:
        @staticmethod
        def jit(fn):
            def unavailable(*args, **kwargs):
                raise RuntimeError(f"{fn.__name__} needs triton, which is not installed")

            return unavailable

        @staticmethod
        def heuristics(values):
            return lambda fn: fn

    class _TlMissing:
        constexpr = "constexpr"  # only ever used as an annotation

    triton, tl = _TritonMissing(), _TlMissing()
    HAS_TRITON = False

# Triton's own switch, read when triton decorates the kernels (at import), like the decorators.
INTERPRET = HAS_TRITON and os.environ.get("TRITON_INTERPRET", "0") == "1"

OPS = ("group_norm_silu", "hybrid_loss")
CPU_BACKENDS = ("triton-interpreter", "native", "math")  # the CPU default order
BODIES = ("auto", "triton", *CPU_BACKENDS)


@dataclass(frozen=True)
class Impl:
    """One body of an op: its forward and backward functions.

    Signatures are those of the op's math body (e.g. `group_norm_silu_fwd_math`).
    """

    name: str
    fwd: Callable
    bwd: Callable


@dataclass(frozen=True)
class Environment:
    """The environment overrides of the op bodies, as `environment()` read them."""

    cpu_body: str | None = None  # HYBENGINE_CPU_BACKEND: force this CPU body where it is available
    native: bool = True  # HYBENGINE_NATIVE=0: never load or run the native C++ kernels
    native_lib: Path | None = None  # HYBENGINE_NATIVE_LIB: load this build instead of the installed one


NO_OVERRIDES = Environment()


def environment() -> Environment:
    """The one place that reads the environment overrides of the op bodies (documented on
    `Environment`); called by a resolve (hybengine.ops.resolve_ops, kernels.info), never per call."""
    lib = os.environ.get("HYBENGINE_NATIVE_LIB")
    env = Environment(cpu_body=os.environ.get("HYBENGINE_CPU_BACKEND") or None,
                      native=os.environ.get("HYBENGINE_NATIVE", "1") != "0",
                      native_lib=Path(lib) if lib else None)
    if env.cpu_body is not None and env.cpu_body not in CPU_BACKENDS:
        raise ValueError(f"HYBENGINE_CPU_BACKEND={env.cpu_body!r}: expected one of {', '.join(CPU_BACKENDS)}")
    return env


def native_state(env: Environment) -> tuple[bool, str]:
    """(the native kernels run under `env`, one line on why or why not)."""
    if not env.native:
        return False, "disabled by HYBENGINE_NATIVE=0"
    ok = native.load(env.native_lib)
    return ok, native.status(env.native_lib)


def available(op: str, body: str, env: Environment = NO_OVERRIDES) -> bool:
    """Whether `body` can run `op` here (under `env`)."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; expected one of {OPS}")
    if body == "triton":
        return HAS_TRITON
    if body == "triton-interpreter":
        return INTERPRET
    if body == "native":
        return native_state(env)[0]
    return body in ("math", "auto")


def select(op: str, device_type: str, env: Environment = NO_OVERRIDES) -> str:
    """The body that runs `op` for tensors on `device_type` by default (`env` applied)."""
    if device_type == "cuda":
        return ("triton-interpreter" if INTERPRET else "triton") if HAS_TRITON else "math"
    if device_type != "cpu":
        return "math"
    if env.cpu_body is not None and available(op, env.cpu_body, env):
        return env.cpu_body
    return next(name for name in CPU_BACKENDS if available(op, name, env))


def resolve_body(op: str, device_type: str, env: Environment) -> tuple[str, str]:
    """(body, reason) of `op` on `device_type` for one run: what `select` picks, and why."""
    body = select(op, device_type, env)
    if device_type != "cpu":
        return body, f"{device_type} default"
    if env.cpu_body is not None:
        why = "HYBENGINE_CPU_BACKEND" if body == env.cpu_body else f"HYBENGINE_CPU_BACKEND={env.cpu_body} unavailable"
        return body, why
    if body == "triton-interpreter":
        return body, "TRITON_INTERPRET=1"
    if body == "native":
        return body, "native library loaded"
    return body, f"native: {native_state(env)[1]}"


def check_body(op: str, body: str) -> None:
    """Raises ValueError (an unknown name) or RuntimeError (a body that cannot run here)."""
    if body not in BODIES:
        raise ValueError(f"unknown body {body!r} for {op}; expected one of {BODIES}")
    if not available(op, body):
        raise RuntimeError(f"body {body!r} is not available for {op} here")


def implementation(op: str, body: str, x: torch.Tensor, impls: Mapping[str, Impl]) -> Impl:
    """The body that runs `op` on `x`: `body` as asked ("auto": `select` for x's device), "math" for
    float64. `impls` holds the op's own "triton" and "math" bodies; "native" comes from kernels/native."""
    name = "math" if x.dtype == torch.float64 else select(op, x.device.type) if body == "auto" else body
    if name == "native":
        if x.device.type != "cpu":
            raise ValueError(f"{op}: the native body runs CPU tensors; got one on {x.device}")
        fwd, bwd = native.kernels(op)
        return Impl("native", fwd, bwd)
    return impls["triton" if name.startswith("triton") else name]


def op_backends(env: Environment = NO_OVERRIDES) -> dict[str, dict[str, str]]:
    """For each op, the body "auto" runs on "cpu" and on "cuda" (under `env`), e.g. for a report."""
    return {op: {dev: select(op, dev, env) for dev in ("cpu", "cuda")} for op in OPS}
