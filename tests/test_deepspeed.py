"""DeepSpeed ZeRO on CPU ranks (gloo), started through the real `deepspeed` launcher."""
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from hybengine.runtime.checkpoint import find_snapshot, load_weights

from tiny_run import run_cli, tiny_overrides

pytestmark = pytest.mark.slow
deepspeed = pytest.importorskip("deepspeed")


def _launcher() -> str:
    exe = Path(sys.executable).parent / "deepspeed"
    return str(exe) if exe.exists() else shutil.which("deepspeed")


def test_two_rank_zero2_loss_falls(tmp_path):
    overrides = tiny_overrides(tmp_path, steps=24, **{
        "train.engine": "deepspeed", "train.deepspeed_config": "configs/deepspeed/zero2.json",
        "train.log_every": 4, "train.ckpt_every": 12, "optim.lr": 3e-3, "optim.warmup_steps": 1,
        "train.ema_halflife_steps": 4})
    r = run_cli([_launcher(), "--num_gpus", "2", "hybengine/train.py", *overrides], timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    log = r.stdout + r.stderr
    assert "engine deepspeed, 2 rank(s) on cpu" in log
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 6
    assert sum(losses[-2:]) / 2 < 0.8 * losses[0], losses
    snap = tmp_path / "checkpoints" / "step_00000024"
    assert (snap / "rank0_state.pt").is_file() and (snap / "rank1_state.pt").is_file()
    assert load_weights(tmp_path)["step"] == 24


def test_two_rank_zero2_resume_after_kill_is_exact(tmp_path):
    """ZeRO-2 on 2 ranks, killed after step 4 and resumed from the step-3 snapshot: the weights (and
    the EMA) equal an uninterrupted run's bit for bit, as tests/test_train_faults.py shows for the
    plain back-end."""
    ds = {"train.engine": "deepspeed", "train.deepspeed_config": "configs/deepspeed/zero2.json"}

    def launch(out, env=None, resume=None):
        args = [_launcher(), "--num_gpus", "2", "hybengine/train.py", *tiny_overrides(out, **ds)]
        return run_cli(args + (["--resume", str(resume)] if resume else []), env=env, timeout=600)

    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    r = launch(straight)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    killed = launch(interrupted, env={"HYBENGINE_KILL_AT_STEP": "4"})
    assert killed.returncode != 0
    assert find_snapshot(interrupted).name == "step_00000003"
    r = launch(interrupted, resume=interrupted)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    a, b = load_weights(straight), load_weights(interrupted)
    assert a["step"] == b["step"] == 6
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs after resume"
