"""Which implementation of each fused op runs on which device, and the optional Triton import.

Every op (`group_norm_silu`, `hybrid_loss`) is one `torch.library.custom_op` whose body asks this
module for an implementation, chosen per call from the tensor's device type:

    cuda : "triton"              Triton kernels compiled for the GPU
                                 ("math" when Triton does not import)
    cpu  : "triton-interpreter"  the same Triton kernels run on CPU tensors by the interpreter,
                                 when TRITON_INTERPRET=1 was set before `hybengine.kernels` was
                                 imported and triton imports (how CI tests the kernels)
           "native"              a C++ CPU kernel registered through `register_native` (issue 7)
           "math"                plain PyTorch that computes the same forward and backward
                                 formulas explicitly (no autograd); runs wherever Triton cannot

On CPU the order above is the default; `set_cpu_backend(name, ops)` forces one (an error if it
cannot run), and `HYBENGINE_CPU_BACKEND=<name>` forces it for every op where it is available.
float64 inputs always take "math" (the Triton kernels compute in fp32).

Triton is optional: when it does not import, `triton` and `tl` below are stand-ins that let the
kernel files define their kernels (calling one raises) so `import hybengine.kernels` still works.
Kernels are decorated when their file is imported, so TRITON_INTERPRET must be set before that.
"""
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

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

# Decided once, like the @triton.jit decorators themselves, which read it at definition time.
INTERPRET = HAS_TRITON and os.environ.get("TRITON_INTERPRET", "0") == "1"

OPS = ("group_norm_silu", "hybrid_loss")
CPU_BACKENDS = ("triton-interpreter", "native", "math")


@dataclass(frozen=True)
class Impl:
    """One implementation of an op: the bodies of its forward and backward custom ops.

    Signatures are those of the op's math implementation (e.g. `group_norm_silu_fwd_math`).
    """

    name: str
    fwd: Callable
    bwd: Callable


_impls: dict[str, dict[str, Impl]] = {op: {} for op in OPS}
_cpu_forced: dict[str, str] = {}  # op -> CPU implementation, set by set_cpu_backend
_cpu_env = os.environ.get("HYBENGINE_CPU_BACKEND") or None  # every op, where available


def register_impl(op: str, name: str, fwd: Callable, bwd: Callable) -> None:
    """Called by the op files for "triton" and "math"."""
    if op not in _impls:
        raise ValueError(f"unknown op {op!r}; expected one of {OPS}")
    _impls[op][name] = Impl(name, fwd, bwd)


def register_native(op: str, fwd: Callable, bwd: Callable) -> None:
    """Hook for the native C++ CPU kernels (issue 7): same signatures as the op's math functions.

    Once registered, "native" is the CPU default unless the Triton interpreter was requested.
    """
    register_impl(op, "native", fwd, bwd)


def set_cpu_backend(name: str | None, ops: tuple[str, ...] = OPS) -> None:
    """Force the CPU implementation of `ops` ("triton-interpreter", "native", "math"); None: default."""
    if name is not None and name not in CPU_BACKENDS:
        raise ValueError(f"unknown CPU backend {name!r}; expected one of {CPU_BACKENDS}")
    missing = [op for op in ops if name is not None and not _available(op, name)]
    if missing:
        raise RuntimeError(f"CPU backend {name!r} is not available for {', '.join(missing)}")
    for op in ops:
        if name is None:
            _cpu_forced.pop(op, None)
        else:
            _cpu_forced[op] = name


@contextmanager
def cpu_backend(name: str, ops: tuple[str, ...] = OPS) -> Iterator[None]:
    """`set_cpu_backend(name, ops)` for a block; the CPU choices in force before come back after it."""
    before = dict(_cpu_forced)
    set_cpu_backend(name, ops)
    try:
        yield
    finally:
        _cpu_forced.clear()
        _cpu_forced.update(before)


def _available(op: str, name: str) -> bool:
    if name == "triton-interpreter":
        return INTERPRET and "triton" in _impls[op]
    return name in _impls[op]


def select(op: str, device_type: str) -> str:
    """The implementation name that runs `op` for tensors on `device_type`."""
    if device_type == "cuda":
        if HAS_TRITON and "triton" in _impls[op]:
            return "triton-interpreter" if INTERPRET else "triton"
        return "math"
    if device_type != "cpu":
        return "math"
    forced = _cpu_forced.get(op, _cpu_env)
    if forced is not None and _available(op, forced):
        return forced
    for name in CPU_BACKENDS:  # the default order
        if _available(op, name):
            return name
    return "math"


def implementation(op: str, x: torch.Tensor) -> Impl:
    """The implementation that runs `op` on `x` (its device and dtype)."""
    name = "math" if x.dtype == torch.float64 else select(op, x.device.type)
    return _impls[op]["triton" if name.startswith("triton") else name]


def op_backends() -> dict[str, dict[str, str]]:
    """For each op, the implementation that runs on "cpu" and on "cuda", e.g. for the run log."""
    return {op: {dev: select(op, dev) for dev in ("cpu", "cuda")} for op in OPS}
