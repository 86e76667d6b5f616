"""Fused ops and their pure-PyTorch references; installs and imports as `hybengine.kernels`.

The folder sits at the top of the repository (the product card fixes it there) and setup.py maps it
to the package `hybengine.kernels` (`package_dir`; a PyPI package owns the top-level name
`kernels`); benchmarks/repo_imports.py does the same mapping for an uninstalled checkout. Layering,
checked by tests/test_layering.py: nothing in here imports `hybengine.*` (only its own
`hybengine.kernels.*` submodules, relatively); in `hybengine/`, only `hybengine/ops.py` imports it
(and the `hybengine info` command its report), so the U-Net and the objective reach a kernel only
through the `Ops` that `hybengine.ops.resolve_ops` hands them when they are built.

`group_norm_silu` and `hybrid_loss` are `torch.library.custom_op`s (namespace `hybengine`) with
Triton kernels; the body that runs (Triton, the interpreter, native C++, math) is an argument of the
op (`body=`, kernels/bodies.py). Under torch.compile the graph holds the custom ops; eager calls
reach the same bodies through a small `autograd.Function`, without the custom ops' per-call Python
layers. Set TRITON_INTERPRET=1 before importing this package to run the Triton kernels on CPU.
`native` loads the C++ CPU kernels (issue 7) where they were built, when a body asks for them.
`upsample_conv` holds the sub-pixel form of the U-Net's upsample + 3x3 conv (plain torch, any
device) and its reference.
"""
from .bodies import op_backends
from .group_norm_silu import group_norm_silu, group_norm_silu_reference
from .hybrid_loss import hybrid_loss
from .hybrid_loss_reference import hybrid_loss_reference
from .upsample_conv import upsample_conv_reference, upsample_conv_subpixel

__all__ = [
    "group_norm_silu",
    "group_norm_silu_reference",
    "hybrid_loss",
    "hybrid_loss_reference",
    "op_backends",
    "upsample_conv_reference",
    "upsample_conv_subpixel",
]
