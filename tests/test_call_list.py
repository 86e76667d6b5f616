"""The real GroupNorm-SiLU call list (benchmarks/call_list.py), recorded from the model by hooks."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from call_list import real_calls, summary  # noqa: E402


def test_tiny_preset_calls_and_layouts():
    calls = real_calls("tiny", batch=2, crop=32, dtype=torch.bfloat16, channels_last=True)
    # tiny: 2 levels x 1 ResBlock down, 2 mid, 2 levels x 2 up; two norms per ResBlock; + norm_out
    assert len(calls) == 2 * (2 + 2 + 4) + 1
    assert all(c.n == 2 and c.groups == 8 and c.dtype == "bfloat16" and c.channels_last for c in calls)
    assert sum(c.modulated for c in calls) == 8  # the second norm of every ResBlock
    assert {(c.c, c.h) for c in calls} >= {(32, 32), (64, 16)}
    nchw = real_calls("tiny", batch=2, crop=32, dtype=torch.bfloat16, channels_last=False)
    assert [(c.c, c.h, c.w) for c in nchw] == [(c.c, c.h, c.w) for c in calls]
    assert not any(c.channels_last for c in nchw)
    assert "17 calls" in summary(calls)
