"""Strided views that the kernels index: (N, C, *spatial) -> (N, C, P) without a copy.

NCHW and channels-last both merge H and W into one pixel axis P with a single stride, so kernels
take (stride_n, stride_c, stride_p) and never need a layout-specific copy.
"""
import torch


def as_n_c_p(t: torch.Tensor) -> torch.Tensor:
    """(N, C, *spatial) -> (N, C, P) view sharing t's strides; a copy only if no such view exists."""
    try:
        return t.view(t.shape[0], t.shape[1], -1)
    except RuntimeError:  # spatial dims not mergeable (an unusual slice): copy once
        return t.contiguous().view(t.shape[0], t.shape[1], -1)


def as_n_p(t: torch.Tensor) -> torch.Tensor:
    """(N, *spatial) -> (N, P) view, a copy only if no such view exists."""
    try:
        return t.view(t.shape[0], -1)
    except RuntimeError:
        return t.contiguous().view(t.shape[0], -1)


def write_back(t: torch.Tensor, t3: torch.Tensor) -> torch.Tensor:
    """After a kernel wrote `t3 = as_n_c_p(t)`: copy into t if t3 had to be a copy; returns t."""
    if t3.data_ptr() != t.data_ptr():
        t.copy_(t3.view(t.shape))
    return t
