"""The training step without the host: no host read inside a step, the step profile by op family,
and the compiled whole step (model.compile_step) against eager."""
from __future__ import annotations

import sys

import pytest
import torch

from hybengine.config import load_config
from hybengine.training_loop import LoopHooks, run_training

from tiny_run import REPO, tiny_overrides

sys.path.insert(0, str(REPO / "benchmarks"))
import profile_step  # noqa: E402

pytestmark = pytest.mark.slow


def _cfg(out, **extra):
    return load_config(None, tiny_overrides(out, **extra))


def test_no_host_read_inside_a_step(tmp_path):
    # steps 1..7, log every 3, snapshot at 5 and 7: only the intervals after 3, 5, 6 and 7 may read
    cfg = _cfg(tmp_path, steps=7, **{"train.log_every": 3, "train.ckpt_every": 5})
    counts, allowed = profile_step.host_reads_per_step(cfg)
    assert allowed == {3, 5, 6, 7}
    inside = {k: v for k, v in counts.items() if k >= 1 and k not in allowed and v}
    assert not inside, f"host reads inside steps (after step: calls): {inside}"
    # the counter does see the loop's reads: the metric and flag reads at the log steps
    assert counts.get(3) and counts.get(6)


def test_host_read_counter_catches_a_read_in_the_step(tmp_path):
    # the counter sees a read made from inside the step (here by the optimizer phase hook, where a
    # `bool(torch.isfinite(loss))` before backward used to sit), so the test above can fail
    mode = profile_step.HostReads()
    probe = torch.ones(())

    class Phase:
        def __init__(self, name):
            self.name = name

        def __enter__(self):
            if self.name == "optimizer":
                bool(torch.isfinite(probe))

        def __exit__(self, *exc):
            return False

    def on_step(n):
        mode.current = n

    with mode:
        run_training(_cfg(tmp_path, steps=2), console_logging=False, hooks=LoopHooks(phase=Phase, on_step=on_step))
    assert mode.counts[1].count("__bool__") == 1  # step 2's optimizer phase, counted after step 1


def test_profile_by_family_accounts_for_the_step(tmp_path):
    from torch.profiler import ProfilerActivity, profile, schedule

    steps = 3
    cfg = _cfg(tmp_path, steps=2 + steps + 1, **{"train.log_every": 100, "train.ckpt_every": 0})
    got = {}

    def ready(p):
        p.export_chrome_trace(str(tmp_path / "trace.json"))
        got.update(profile_step.summarize(p.events(), steps, on_gpu=False))

    with profile(activities=[ProfilerActivity.CPU], schedule=schedule(wait=0, warmup=2, active=steps, repeat=1),
                 on_trace_ready=ready) as prof:
        run_training(cfg, console_logging=False, hooks=profile_step._hooks(prof))
    assert (tmp_path / "trace.json").stat().st_size > 1000
    for fam in ("convolution", "groupnorm_silu", "joint loss", "optimizer", "ema", "data"):
        assert got.get(fam, 0) > 0, (fam, got)
    parts = sum(v for k, v in got.items() if k != "step")
    assert 0.8 * got["step"] < parts < 1.2 * got["step"], got  # the families cover the step's wall time
    print(profile_step.table([{"config": "tiny", **got}]))


def test_compiled_whole_step_matches_eager(tmp_path):
    common = {"steps": 3, "train.ckpt_every": 0, "train.log_every": 1, "train.ema_halflife_steps": 0}
    eager = run_training(_cfg(tmp_path / "eager", **common), console_logging=False)
    whole = {"model.compile": "true", "model.compile_step": "true"}
    compiled = run_training(_cfg(tmp_path / "step", **common, **whole), console_logging=False)
    for (name, a), b in zip(eager.net.state_dict().items(), compiled.net.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
