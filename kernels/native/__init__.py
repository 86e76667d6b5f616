"""Native C++ CPU kernels of the fused ops (issue 7): loads libhybengine_native on demand.

The library (sources beside this file, built by the top-level CMakeLists.txt when setup.py runs)
defines the ops `torch.ops.hybengine_native.{group_norm_silu,hybrid_loss}_{fwd,bwd}` with the
argument lists and results of the ops' math bodies; `kernels(op)` hands them to kernels/bodies.py
as the "native" body of `hybengine::group_norm_silu_*` and `hybengine::hybrid_loss_*`. The public
ops, their schemas, fake and autograd registrations are unchanged; only the body that runs on CPU
tensors changes, and only where a resolve picked it (bodies.resolve_body).

When the library is missing (no compiler or cmake at install time, a torch without headers),
was built for another torch, or fails to load, `load` returns False and logs why once: the ops keep
their math body and `hybengine.ops` its reference. Which build loads (HYBENGINE_NATIVE_LIB) and
whether any does (HYBENGINE_NATIVE=0) are environment overrides read by bodies.environment(), and
passed here as arguments. `python -m hybengine.kernels.info` shows what runs where.
"""
from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch

log = logging.getLogger("hybengine.kernels.native")

LIB_NAME = "libhybengine_native.so"
STAMP_NAME = "build.json"  # written by setup.py beside the library: the torch it was built against
INSTALLED = Path(__file__).resolve().parent / LIB_NAME


def _version_mismatch(path: Path) -> str | None:
    """Why the library must not be loaded into this torch (an ABI mismatch can crash), or None."""
    stamp = path.parent / STAMP_NAME
    if not stamp.is_file():
        return None  # built by hand with CMake: trust the builder
    built = json.loads(stamp.read_text()).get("torch", "")
    running = torch.__version__
    if built.split("+")[0] != running.split("+")[0]:
        return f"built for torch {built}, running torch {running}; reinstall (pip install -e .) to rebuild"
    return None


@functools.cache
def _load(path: Path) -> str | None:
    """Loads the library at `path` once; None when loaded, else why not (logged once)."""
    if not path.is_file():
        reason = (f"{LIB_NAME} not built (no C++ compiler or cmake when the package was installed?)"
                  if path == INSTALLED else f"{path} does not exist")
    else:
        reason = _version_mismatch(path)
        if reason is None:
            try:
                torch.ops.load_library(str(path))
            except (OSError, RuntimeError) as err:
                reason = f"{path} did not load: {err}"
    if reason is not None:
        log.warning("native CPU kernels unavailable (%s); CPU ops fall back to math/reference", reason)
    return reason


def load(path: Path | None = None) -> bool:
    """Loads the build at `path` (default: the one installed beside this file) once; False if it
    cannot be loaded. Both builds register the same op names: load one per process."""
    return _load(path or INSTALLED) is None


def kernels(op: str) -> tuple[Callable, Callable]:
    """(fwd, bwd) of `op` ("group_norm_silu" or "hybrid_loss") from the loaded library."""
    lib = torch.ops.hybengine_native
    return getattr(lib, f"{op}_fwd").default, getattr(lib, f"{op}_bwd").default


def status(path: Path | None = None) -> str:
    """One line for logs and the info command: where the library is and which kernels run."""
    path = path or INSTALLED
    reason = _load(path)
    if reason is not None:
        return f"not loaded: {reason}"
    return f"{path} ({torch.ops.hybengine_native.info()}, {torch.get_num_threads()} threads)"


def available() -> bool:
    """Whether the installed build loads here (tests and benchmarks skip native work without it)."""
    return load()
