"""The one choice between the Triton designs of GroupNorm-SiLU, and the "triton" body that applies it.

    groups  groups.py: one program (or a split of S programs) per (sample, group); both layouts,
            timed on H100/H200, the default
    rows    rows.py: channels-last only (NCHW inputs fall back to groups), programs own whole pixel
            rows; EXPERIMENTAL
    slab    slab.py: both layouts, one persistent launch per pass, each input read once from DRAM
            by the counted traffic; EXPERIMENTAL

EXPERIMENTAL lists the designs not yet timed on a GPU (benchmarks/gpu_run.sh, call 1, times them
over the real call list): they pass the same correctness tests, and a config or benchmark may ask
for them by name, but "auto" never picks them until a GPU timing says they pay.

The request comes from the caller as an argument (the op registry, hybengine.ops, passes the run's
config key kernels.group_norm_silu_channels_last; benchmarks name a design), never through a module
global or environment variable. "auto" is DEFAULT_DESIGN.
"""
import torch

from ..launch import check_sample_size
from . import groups as groups_design
from . import rows, slab

DESIGNS = ("groups", "rows", "slab")
EXPERIMENTAL = ("rows", "slab")  # not yet timed on a GPU: never the default
DEFAULT_DESIGN = "groups"  # the design timed on H100/H200


def choose_design(x: torch.Tensor, requested: str = "auto", hw_per_split: int | None = None) -> str:
    """"groups", "rows" or "slab" for input x under `requested` ("auto" or one of DESIGNS); a forced
    split size (tests) means the group kernels."""
    if requested == "auto":
        requested = DEFAULT_DESIGN
    if requested not in DESIGNS:
        raise ValueError(f"unknown GroupNorm-SiLU design {requested!r}; expected auto or one of {DESIGNS}")
    if hw_per_split is not None or requested == "groups":
        return "groups"
    if requested == "rows":
        return "rows" if rows.rows_supported(x) else "groups"
    return "slab"


def group_norm_silu_fwd_triton(
    x: torch.Tensor,  # (N, C, *spatial), NCHW or channels-last
    weight: torch.Tensor,  # (C,)
    bias: torch.Tensor,  # (C,)
    scale: torch.Tensor | None,  # (N, C)
    shift: torch.Tensor | None,  # (N, C)
    groups: int,
    eps: float,
    design: str = "auto",  # `choose_design`'s request
    hw_per_split: int | None = None,  # force the group kernels' split size (tests); None: `launch.split_plan`
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns y (x's dtype and layout), mean and rstd ((N, G) fp32)."""
    check_sample_size(x, "x", "group_norm_silu")
    chosen = choose_design(x, design, hw_per_split)
    if chosen == "rows":
        return rows.group_norm_silu_fwd_rows(x, weight, bias, scale, shift, groups, eps)
    if chosen == "slab":
        return slab.group_norm_silu_fwd_slab(x, weight, bias, scale, shift, groups, eps)
    return groups_design.group_norm_silu_fwd_groups(x, weight, bias, scale, shift, groups, eps, hw_per_split)


def group_norm_silu_bwd_triton(
    dy: torch.Tensor,  # (N, C, *spatial), any layout
    x: torch.Tensor,  # (N, C, *spatial)
    weight: torch.Tensor,
    bias: torch.Tensor,
    scale: torch.Tensor | None,
    shift: torch.Tensor | None,
    mean: torch.Tensor,  # (N, G) fp32
    rstd: torch.Tensor,  # (N, G) fp32
    groups: int,
    eps: float,
    design: str = "auto",
    hw_per_split: int | None = None,
) -> tuple[torch.Tensor, ...]:
    """Returns dx (x's dtype and layout), dweight, dbias, dscale, dshift."""
    check_sample_size(x, "x", "group_norm_silu")
    chosen = choose_design(x, design, hw_per_split)
    if chosen == "rows":
        return rows.group_norm_silu_bwd_rows(dy, x, weight, bias, scale, shift, mean, rstd, groups, eps)
    if chosen == "slab":
        return slab.group_norm_silu_bwd_slab(dy, x, weight, bias, scale, shift, mean, rstd, groups, eps)
    return groups_design.group_norm_silu_bwd_groups(dy, x, weight, bias, scale, shift, mean, rstd, groups, eps,
                                                    hw_per_split)
