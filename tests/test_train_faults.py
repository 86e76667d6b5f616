"""Kills, half-written snapshots and NaNs: the run either continues exactly or stops cleanly.

Each python start costs seconds (torch import), so one run folder is taken through the three stops in
turn (module fixture `stopped`): SIGKILL after step 4, Ctrl-C after step 5 and SIGKILL while the
step-6 snapshot is half written, each resumed from the step-3 snapshot, then a last --resume
finishes it. What each stop left behind is recorded before the next start; the tests below check
one stop each, and all three that the finished run equals an uninterrupted one bit for bit."""
import json
import shutil
import signal

import pytest
import torch

from hybengine.runtime.checkpoint import find_snapshot, load_weights

from tiny_run import run_cli, tiny_overrides

pytestmark = pytest.mark.slow
ONE_THREAD = {"train.threads": 1}  # each test process on one core of the host's two (pytest -n 2)


def _train(out, env=None, resume=None, **extra):
    args = ["hybengine/train.py", *tiny_overrides(out, **{**ONE_THREAD, **extra})]
    if resume:
        args += ["--resume", str(resume)]
    return run_cli(args, env=env)


def _assert_same_weights(a: dict, b: dict):
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs"


def _steps(out) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    r = _train(out)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """The run folder, the finished run's weights and, per stop, its process and what it left."""
    out = tmp_path_factory.mktemp("stopped")
    root = out / "checkpoints"
    seen = {"out": out}
    seen["kill"] = _train(out, env={"HYBENGINE_KILL_AT_STEP": "4"})
    seen["kill_snapshot"] = find_snapshot(out).name
    seen["ctrl_c"] = _train(out, env={"HYBENGINE_INTERRUPT_AT_STEP": "5"}, resume=out)
    seen["save_kill"] = _train(out, env={"HYBENGINE_KILL_DURING_SAVE": "6"}, resume=out)
    seen["save_kill_tmp"] = (root / "step_00000006.tmp").is_dir()
    seen["save_kill_latest"] = (root / "latest").read_text().strip()
    seen["save_kill_snapshot"] = find_snapshot(out).name
    seen["final"] = _train(out, resume=out)
    assert seen["final"].returncode == 0, seen["final"].stderr[-3000:]
    seen["weights"] = load_weights(out)
    return seen


def test_resume_after_kill_is_exact(straight, stopped):
    assert stopped["kill"].returncode == -signal.SIGKILL
    assert stopped["kill_snapshot"] == "step_00000003"  # step 4 was lost with the process
    resumed = stopped["weights"]
    assert resumed["step"] == 6
    _assert_same_weights(load_weights(straight), resumed)
    assert _steps(stopped["out"]) == [2, 4, 6]  # step 4 was logged before the kill: not recorded twice


def test_kill_during_snapshot_keeps_previous(straight, stopped):
    assert stopped["save_kill"].returncode == -signal.SIGKILL
    assert stopped["save_kill_tmp"]  # the half-written one is there...
    assert stopped["save_kill_latest"] == "step_00000003"  # ...but nothing points to it
    assert stopped["save_kill_snapshot"] == "step_00000003"
    assert not (stopped["out"] / "checkpoints" / "step_00000006.tmp").exists()
    _assert_same_weights(load_weights(straight), stopped["weights"])


def test_ctrl_c_is_one_line_and_resumes_exactly(straight, stopped):  # issue 26 item 7
    r, out = stopped["ctrl_c"], stopped["out"]
    assert r.returncode == 130, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "KeyboardInterrupt" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("train interrupted:")]
    assert len(lines) == 1 and "step_00000003 is intact" in lines[0] and f"--resume {out}" in lines[0]
    _assert_same_weights(load_weights(straight), stopped["weights"])
    assert _steps(out) == [2, 4, 6]  # step 4, logged before the stop, is not logged twice


def test_resume_refuses_a_different_run(straight, tmp_path):
    run = shutil.copytree(straight, tmp_path / "run")
    r = _train(run, resume=run, **{"optim.lr": 0.5})
    assert r.returncode != 0 and "optim.lr" in r.stderr


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
