"""Native C++ CPU kernels of the fused ops (issue 7): loads libhybengine_native and plugs it in.

The library (sources beside this file, built by the top-level CMakeLists.txt when setup.py runs)
defines the ops `torch.ops.hybengine_native.{group_norm_silu,hybrid_loss}_{fwd,bwd}` with the
argument lists and results of the ops' math bodies; `load()` registers them as the "native" CPU
implementation of `hybengine::group_norm_silu_*` and `hybengine::hybrid_loss_*` through
`bodies.register_native`. The public ops, their schemas, fake and autograd registrations are
unchanged; only the body that runs on CPU tensors changes (see `bodies.select`).

When the library is missing (no compiler or cmake at install time, a torch without headers),
was built for another torch, or fails to load, nothing is registered: the ops keep their math
body and `hybengine.ops` its reference, and one log line says why. `HYBENGINE_NATIVE=0` skips
loading on purpose. `python -m hybengine.kernels.info` shows what runs where.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from .. import bodies

log = logging.getLogger("hybengine.kernels.native")

LIB_NAME = "libhybengine_native.so"
STAMP_NAME = "build.json"  # written by setup.py beside the library: the torch it was built against
_HERE = Path(__file__).resolve().parent

_status: dict[str, str | None] = {"loaded": None, "path": None, "reason": None}


def library_path() -> Path | None:
    """The library to load: $HYBENGINE_NATIVE_LIB, else the one installed beside this file."""
    env = os.environ.get("HYBENGINE_NATIVE_LIB")
    if env:
        return Path(env)
    path = _HERE / LIB_NAME
    return path if path.is_file() else None


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


def load() -> bool:
    """Loads the library once and registers the native implementations; False (logged once) if not."""
    if _status["loaded"] is not None:
        return _status["loaded"] == "yes"
    reason = None
    path = library_path()
    if os.environ.get("HYBENGINE_NATIVE", "1") == "0":
        reason = "disabled by HYBENGINE_NATIVE=0"
    elif path is None:
        reason = f"{LIB_NAME} not built (no C++ compiler or cmake when the package was installed?)"
    else:
        reason = _version_mismatch(path)
        if reason is None:
            try:
                torch.ops.load_library(str(path))
            except (OSError, RuntimeError) as err:
                reason = f"{path} did not load: {err}"
    if reason is not None:
        _status.update(loaded="no", reason=reason)
        log.warning("native CPU kernels unavailable (%s); CPU ops fall back to math/reference", reason)
        return False
    ops = torch.ops.hybengine_native
    bodies.register_native("group_norm_silu", ops.group_norm_silu_fwd.default, ops.group_norm_silu_bwd.default)
    bodies.register_native("hybrid_loss", ops.hybrid_loss_fwd.default, ops.hybrid_loss_bwd.default)
    _status.update(loaded="yes", path=str(path))
    return True


def available() -> bool:
    return _status["loaded"] == "yes"


def status() -> str:
    """One line for logs and the info command: where the library is and which kernels run."""
    if _status["loaded"] is None:
        load()
    if _status["loaded"] != "yes":
        return f"not loaded: {_status['reason']}"
    return f"{_status['path']} ({torch.ops.hybengine_native.info()}, {torch.get_num_threads()} threads)"
