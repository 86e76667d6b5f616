"""Fused ops and their pure-PyTorch references (installs as `hybengine.kernels`)."""
from .group_norm_silu_reference import group_norm_silu_reference
from .hybrid_loss_reference import hybrid_loss_reference

__all__ = ["group_norm_silu_reference", "hybrid_loss_reference"]
