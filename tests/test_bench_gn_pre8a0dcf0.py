"""The benchmark-only provider `groups-pre8a0dcf0` (benchmarks/probes/gn_groups_pre8a0dcf0.py: the group kernels
before that commit) against the float64 reference under the Triton interpreter: every output and
gradient, both layouts, whole and split groups, modulation on and off. Tiny shapes."""
import sys
from pathlib import Path

import pytest
import torch
from kernel_helpers import check_group_norm_silu, gn_inputs

from hybengine.kernels import bodies
from hybengine.kernels.launch import split_plan

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from probes.gn_groups_pre8a0dcf0 import group_norm_silu_pre8a0dcf0  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning"),
    pytest.mark.skipif(bodies.select("group_norm_silu", "cpu") != "triton-interpreter",
                       reason="Triton interpreter not active"),
]


@pytest.mark.parametrize("shape,channels_last,modulated", [((2, 6, 7, 9, 3), False, True),
                                                           ((1, 2, 16, 16, 1), True, False)],
                         ids=["odd-nchw", "split-nhwc"])
def test_matches_reference(shape, channels_last, modulated):
    n, c, h, w, g = shape
    if shape[1] == 2:  # the CPU launch plan splits this one's groups over several programs
        assert split_plan(n * g, h * w, c // g, torch.device("cpu"))[0] > 1
    inputs = gn_inputs(n, c, h, w, scale=modulated, shift=modulated, channels_last=channels_last)
    check_group_norm_silu(inputs, g, torch.float32, fn=group_norm_silu_pre8a0dcf0)
