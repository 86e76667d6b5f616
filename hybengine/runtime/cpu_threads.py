"""torch's CPU thread count for the length of one run, then the caller's again.

`train.threads` (0: torch's default) sets how many threads CPU kernels use. The count is process-wide
and changes the float rounding of reductions and convolutions, so a run that set it and left it would
change every later run in the same process (a notebook, a sweep, a test session) down to the last bit.
The training loop and the batched runner set it inside `torch_threads` and hand the caller's back.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch.set_num_threads(n) for the block (n=0: unchanged); the previous count afterwards."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
