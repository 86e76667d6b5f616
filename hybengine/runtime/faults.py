"""Fault injection for the fault tests: real kills and real NaNs at chosen points, set by env vars.

HYBENGINE_KILL_AT_STEP=N         SIGKILL this process once optimizer step N is done (before its snapshot)
HYBENGINE_KILL_DURING_SAVE=N     SIGKILL while the snapshot of step N is half written
HYBENGINE_INTERRUPT_AT_STEP=N    send this process SIGINT (what Ctrl-C sends) once optimizer step N is done
HYBENGINE_KILL_AT_FILE=name:n    SIGKILL at the n-th atomic write of a file called `name` (default 1), its temp
                                 file written and not yet renamed (sweeps, experiments: result.json, runs.csv)
HYBENGINE_KILL_RANK=r            the kills above hit only global rank r (the RANK the launcher sets)
HYBENGINE_NAN_AT_BATCHES=i,j     replace the loss of micro-batches i, j (0-based, counted per run) with NaN
Unset (the normal case) they cost one dictionary lookup at start-up.
"""
from __future__ import annotations

import os
import signal


def _int_env(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


KILL_AT_STEP = _int_env("HYBENGINE_KILL_AT_STEP")
KILL_DURING_SAVE = _int_env("HYBENGINE_KILL_DURING_SAVE")
INTERRUPT_AT_STEP = _int_env("HYBENGINE_INTERRUPT_AT_STEP")
_AT_FILE = os.environ.get("HYBENGINE_KILL_AT_FILE", "").partition(":")
KILL_AT_FILE = (_AT_FILE[0], int(_AT_FILE[2] or 1)) if _AT_FILE[0] else None
_file_writes: dict[str, int] = {}
KILL_RANK = _int_env("HYBENGINE_KILL_RANK")
NAN_AT_BATCHES = frozenset(int(i) for i in os.environ.get("HYBENGINE_NAN_AT_BATCHES", "").split(",") if i)


def kill_now() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def maybe_kill_at_file(name: str) -> None:
    """Counts atomic writes of files called `name`; SIGKILL at the one HYBENGINE_KILL_AT_FILE names."""
    if KILL_AT_FILE is None or name != KILL_AT_FILE[0]:
        return
    _file_writes[name] = _file_writes.get(name, 0) + 1
    if _file_writes[name] == KILL_AT_FILE[1]:
        kill_now()


def maybe_kill(point: int | None, step: int, sig: int = signal.SIGKILL) -> None:
    if point is not None and step == point and KILL_RANK in (None, int(os.environ.get("RANK", "0"))):
        os.kill(os.getpid(), sig)
