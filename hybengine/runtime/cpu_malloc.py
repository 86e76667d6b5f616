"""glibc malloc settings for CPU training: keep freed activation memory for the next step.

On the CPU, PyTorch allocates tensors with plain malloc. glibc hands out large blocks as fresh
mmap pages. Its threshold for that starts at 128 KiB and grows only as such blocks are freed. Freed
memory at the top of the heap goes back to the OS once it passes a trim threshold. So each training
step's activations, megabytes each, come back as new pages, and the kernel faults and zeroes
every 4 KiB of them again. For the tiny U-Net at batch 8, 64x64, that was 6,200-8,200 page faults
per step of the engine's training loop and 13,100-19,900 of plain's; tuned, the engine's loop took
1-202 (benchmarks/cpu_step_phases.py, rows in benchmarks/results/cpu_phases.csv). On a GPU,
PyTorch's caching allocator already avoids this; `tune()` gives the CPU the same behaviour
through mallopt:

    M_MMAP_THRESHOLD = 32 MiB   blocks below it come from the heap (this also fixes the threshold)
    M_TRIM_THRESHOLD = 1 GiB    freed heap memory stays with the process up to that
    M_TOP_PAD        = 64 MiB   the heap grows in larger steps

The cost: the process keeps its peak heap instead of returning it between steps. Numerics are
untouched. The settings are process-wide and last until the process ends. A C library without
mallopt (not glibc) is logged and left alone.

It is opt-in (train.cpu_malloc=tuned). On the 2-core dev VM the faults went, but the step time
did not move beyond that host's noise, at 64x64 or at 128x128 (docs/lab/malloc.md, with its logs).
So the engine's CPU config leaves malloc alone, and bench_train.py's engine-malloc-tuned variant
re-measures it where a host is quieter.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("hybengine.runtime")

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's <malloc.h>
SETTINGS = ((M_MMAP_THRESHOLD, 32 << 20), (M_TRIM_THRESHOLD, 1 << 30), (M_TOP_PAD, 64 << 20))

_tuned = False


def _mallopt():
    name = ctypes.util.find_library("c")
    try:
        fn = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return fn


def tune() -> bool:
    """Applies SETTINGS once per process; True when they are in force."""
    global _tuned
    if _tuned:
        return True
    mallopt = _mallopt()
    if mallopt is None:
        log.info("train.cpu_malloc: this C library has no mallopt (not glibc); malloc left as it is")
        return False
    failed = [param for param, value in SETTINGS if mallopt(param, value) != 1]
    if failed:
        log.warning("train.cpu_malloc: mallopt refused parameters %s; malloc partly tuned", failed)
        return False
    _tuned = True
    return True


def apply(setting: str, device_type: str) -> str:
    """Carries out train.cpu_malloc for a run on `device_type`; returns what is in force, for the log."""
    if setting != "tuned" or device_type != "cpu":
        return "tuned (earlier run in this process)" if _tuned else "default"
    return "tuned" if tune() else "default (tuning unavailable)"
