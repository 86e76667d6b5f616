"""Kills, half-written snapshots and NaNs: the run either continues exactly or stops cleanly."""
import json
import signal

import pytest
import torch

from hybengine.runtime.checkpoint import find_snapshot, load_weights

from tiny_run import run_cli, tiny_overrides

pytestmark = pytest.mark.slow


def _train(out, env=None, resume=None, **extra):
    args = ["hybengine/train.py", *tiny_overrides(out, **extra)]
    if resume:
        args += ["--resume", str(resume)]
    return run_cli(args, env=env)


def _assert_same_weights(a: dict, b: dict):
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs"


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    r = _train(out)
    assert r.returncode == 0, r.stderr[-3000:]
    return load_weights(out)


def test_resume_after_kill_is_exact(straight, tmp_path):
    killed = _train(tmp_path, env={"HYBENGINE_KILL_AT_STEP": "4"})
    assert killed.returncode == -signal.SIGKILL
    assert find_snapshot(tmp_path).name == "step_00000003"  # step 4 was lost with the process
    r = _train(tmp_path, resume=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    resumed = load_weights(tmp_path)
    assert resumed["step"] == 6
    _assert_same_weights(straight, resumed)
    assert _steps(tmp_path) == [2, 4, 6]  # step 4 was logged before the kill: not recorded twice


def test_kill_during_snapshot_keeps_previous(straight, tmp_path):
    killed = _train(tmp_path, env={"HYBENGINE_KILL_DURING_SAVE": "6"})
    assert killed.returncode == -signal.SIGKILL
    root = tmp_path / "checkpoints"
    assert (root / "step_00000006.tmp").is_dir()  # the half-written one is there...
    assert (root / "latest").read_text().strip() == "step_00000003"  # ...but nothing points to it
    assert find_snapshot(tmp_path).name == "step_00000003"
    r = _train(tmp_path, resume=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (root / "step_00000006.tmp").exists()
    _assert_same_weights(straight, load_weights(tmp_path))


def test_nan_loss_is_skipped_and_reported(tmp_path):
    r = _train(tmp_path, env={"HYBENGINE_NAN_AT_BATCHES": "2"}, steps=4)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "non-finite loss at step 3 (micro-batch 2)" in r.stderr
    w = load_weights(tmp_path)
    assert w["step"] == 4 and all(torch.isfinite(v).all() for v in w["model"].values())
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(rec["loss"])) for rec in logged)


def test_repeated_nan_stops_with_last_good_checkpoint(tmp_path):
    r = _train(tmp_path, env={"HYBENGINE_NAN_AT_BATCHES": "3,4,5,6,7,8"}, steps=8,
               **{"train.ckpt_every": 1, "train.max_bad_steps": 3})
    assert r.returncode != 0
    assert "3 non-finite losses in a row at step 4" in r.stderr
    w = load_weights(tmp_path)
    assert w["step"] == 3 and all(torch.isfinite(v).all() for v in w["model"].values())


def test_resume_refuses_a_different_run(straight, tmp_path):
    assert _train(tmp_path, steps=3).returncode == 0
    r = _train(tmp_path, resume=tmp_path, **{"optim.lr": 0.5})
    assert r.returncode != 0 and "optim.lr" in r.stderr


def _steps(out) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_ctrl_c_is_one_line_and_resumes_exactly(straight, tmp_path):  # issue 26 item 7
    r = _train(tmp_path, env={"HYBENGINE_INTERRUPT_AT_STEP": "5"})
    assert r.returncode == 130, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "KeyboardInterrupt" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("train interrupted:")]
    assert len(lines) == 1 and "step_00000003 is intact" in lines[0] and f"--resume {tmp_path}" in lines[0]
    r = _train(tmp_path, resume=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same_weights(straight, load_weights(tmp_path))
    assert _steps(tmp_path) == [2, 4, 6]  # step 4, logged before the stop, is not logged twice
