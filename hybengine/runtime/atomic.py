"""Writes that either happen whole or not at all: temp file in the same folder, fsync, rename."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from . import faults


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _replacing(path: Path) -> Iterator[str]:
    """Yields a temp path beside `path`; on success it is fsynced and renamed over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        faults.maybe_kill_at_file(path.name)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:  # a write's ENOSPC names no file: name it
            raise OSError(e.errno, f"{e.strerror or e} while writing {path}") from e
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with _replacing(path) as tmp:
        Path(tmp).write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj, path: Path) -> None:
    with _replacing(path) as tmp, open(tmp, "wb") as f:
        # through a Python file object: a full disk raises OSError(ENOSPC), not torch's opaque
        # "basic_ios::clear: iostream error" / "unexpected pos" from its own C++ writer
        torch.save(obj, f)


def atomic_rename_dir(src: Path, dst: Path) -> None:
    os.replace(src, dst)
    _fsync_dir(Path(dst).parent)
