"""DeepSpeed ZeRO on CPU ranks (gloo), started through the real `deepspeed` launcher."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hybengine.runtime.checkpoint import find_snapshot, load_weights

from tiny_run import REPO, run_cli, tiny_overrides

pytestmark = pytest.mark.slow
deepspeed = pytest.importorskip("deepspeed")


def _launcher() -> str:
    exe = Path(sys.executable).parent / "deepspeed"
    return str(exe) if exe.exists() else shutil.which("deepspeed")


def _free_port() -> int:
    """A port nobody listens on now: the launcher's default 29500 may be taken by another job here."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_rank_zero2_loss_falls(tmp_path):
    overrides = tiny_overrides(tmp_path, steps=24, **{
        "train.backend": "deepspeed", "train.deepspeed_config": "configs/deepspeed/zero2.json",
        "train.log_every": 4, "train.ckpt_every": 12, "optim.lr": 3e-3, "optim.warmup_steps": 1,
        "train.ema_halflife_steps": 4})
    r = run_cli([_launcher(), "--num_gpus", "2", "--master_port", str(_free_port()), "hybengine/train.py",
                 *overrides], timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    log = r.stdout + r.stderr
    assert "backend deepspeed, 2 rank(s) on cpu" in log
    assert "shm_comm" not in log  # the inference-only comm op is not built (distributed._skip_shm_comm_build)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 6
    assert sum(losses[-2:]) / 2 < 0.8 * losses[0], losses
    snap = tmp_path / "checkpoints" / "step_00000024"
    assert (snap / "rank0_state.pt").is_file() and (snap / "rank1_state.pt").is_file()
    assert load_weights(tmp_path)["step"] == 24


DS = {"train.backend": "deepspeed", "train.deepspeed_config": "configs/deepspeed/zero2.json"}


def _launch(out, env=None, resume=None, timeout=600):
    args = [_launcher(), "--num_gpus", "2", "--master_port", str(_free_port()), "hybengine/train.py",
            *tiny_overrides(out, **DS)]
    return run_cli(args + (["--resume", str(resume)] if resume else []), env=env, timeout=timeout)


def _assert_same(a: dict, b: dict) -> None:
    assert a["step"] == b["step"] == 6
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs after resume"


@pytest.fixture(scope="module")
def straight_zero2(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    r = _launch(out)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return load_weights(out)


def test_two_rank_zero2_resume_after_kill_is_exact(straight_zero2, tmp_path):
    """ZeRO-2 on 2 ranks, killed after step 4 and resumed from the step-3 snapshot: the weights (and
    the EMA) equal an uninterrupted run's bit for bit, as tests/test_train_faults.py shows for the
    plain back-end."""
    killed = _launch(tmp_path, env={"HYBENGINE_KILL_AT_STEP": "4"})
    assert killed.returncode != 0
    assert find_snapshot(tmp_path).name == "step_00000003"
    r = _launch(tmp_path, resume=tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    _assert_same(straight_zero2, load_weights(tmp_path))


def test_one_rank_killed_stops_the_other_and_resumes_exactly(straight_zero2, tmp_path):
    """Item 18: only rank 1 is SIGKILLed after step 4. Rank 0 would wait in the next all-reduce (gloo's
    timeout is 30 minutes); the DeepSpeed launcher must stop it well within the bound here. No
    half-written snapshot is visible, and --resume continues bit for bit."""
    t0 = time.perf_counter()
    killed = _launch(tmp_path, env={"HYBENGINE_KILL_AT_STEP": "4", "HYBENGINE_KILL_RANK": "1"}, timeout=240)
    elapsed = time.perf_counter() - t0
    log = killed.stdout + killed.stderr
    assert killed.returncode != 0, log[-4000:]
    assert "return code = -9" in log, log[-4000:]  # rank 1 died of the SIGKILL; the launcher saw it
    root = tmp_path / "checkpoints"
    assert (root / "latest").read_text().strip() == "step_00000003"
    assert [p.name for p in root.iterdir() if p.is_dir() and not p.name.endswith(".tmp")] == ["step_00000003"]
    assert find_snapshot(tmp_path).name == "step_00000003"
    r = _launch(tmp_path, resume=tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    _assert_same(straight_zero2, load_weights(tmp_path))
    print(f"one-rank kill: launcher returned after {elapsed:.0f} s (start-up included)")


def test_two_node_launch_over_localhost_trains_and_resumes(straight_zero2, tmp_path):
    """Item 18: DeepSpeed's multi-node mode, one CPU rank per "node" (a hostfile of two hosts, both this
    machine), each node's launcher started as on a cluster without ssh (`--no_ssh --node_rank`; with
    ssh the launcher starts the same command on each host through pdsh). 3 steps, then --resume to 6:
    bit for bit the single-node 2-rank run."""
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")
    port = str(_free_port())
    out = tmp_path / "run"

    def launch_nodes(steps: int, resume: bool) -> None:
        over = tiny_overrides(out, steps=steps, **DS)
        procs = [subprocess.Popen([_launcher(), "--hostfile", str(hostfile), "--no_ssh", "--node_rank", str(n),
                                   "--master_addr", "127.0.0.1", "--master_port", port, "hybengine/train.py",
                                   *over, *(["--resume", str(out)] if resume else [])],
                                  cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for n in (0, 1)]
        logs = [p.communicate(timeout=600)[0] for p in procs]
        for n, (p, log) in enumerate(zip(procs, logs, strict=True)):
            assert p.returncode == 0, f"node {n}:\n{log[-4000:]}"
        assert "backend deepspeed, 2 rank(s) on cpu" in logs[0]

    launch_nodes(3, resume=False)
    assert find_snapshot(out).name == "step_00000003"
    launch_nodes(6, resume=True)
    _assert_same(straight_zero2, load_weights(out))
