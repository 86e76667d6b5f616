"""DeepSpeed ZeRO on CPU ranks (gloo), started through the real `deepspeed` launcher."""
import json
import shutil
import sys
from pathlib import Path

import pytest

from hybengine.engine.checkpoint import load_weights

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
