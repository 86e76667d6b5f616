"""Fused ops and their pure-PyTorch references (installs as `hybengine.kernels`).

`group_norm_silu` and `hybrid_loss` are `torch.library.custom_op`s (namespace `hybengine`) with
Triton kernels; `bodies.op_backends()` says which implementation runs on each device. Under
torch.compile the graph holds the custom ops; eager calls reach the same bodies through a small
`autograd.Function`, without the custom ops' per-call Python layers.
Set TRITON_INTERPRET=1 before importing this package to run the Triton kernels on CPU.
`native` loads the C++ CPU kernels (issue 7) where they were built and registers them as "native".
`upsample_conv` holds the sub-pixel form of the U-Net's upsample + 3x3 conv (plain torch, any device).
"""
from .bodies import op_backends
from .group_norm_silu import group_norm_silu, group_norm_silu_reference
from .hybrid_loss import hybrid_loss
from .hybrid_loss_reference import hybrid_loss_reference
from .native import load as _load_native

_load_native()

__all__ = [
    "group_norm_silu",
    "group_norm_silu_reference",
    "hybrid_loss",
    "hybrid_loss_reference",
    "op_backends",
]
