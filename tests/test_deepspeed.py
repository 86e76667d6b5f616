"""DeepSpeed ZeRO on CPU ranks (gloo), started through the real `deepspeed` launcher.

Every launch starts the launcher and each rank in a fresh python (torch and DeepSpeed imported
again, seconds each), so the tests share one uninterrupted 2-rank ZeRO-2 run (module fixture
`straight`, 24 steps): its losses must fall, and its step-6 snapshot is the reference that the killed
and resumed 6-step runs of the same config must equal bit for bit (the learning rate is constant after
warm-up, so train.steps does not change the first 6 steps)."""
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


# One config for every run here; only train.steps differs (24 for the reference, 6 for the killed ones).
# train.threads=1: 2 ranks on the host's 2 cores.
DS = {"train.backend": "deepspeed", "train.deepspeed_config": "configs/deepspeed/zero2.json", "optim.lr": 3e-3,
      "optim.warmup_steps": 1, "optim.decay": "constant", "train.ema_halflife_steps": 4, "train.log_every": 4,
      "train.ckpt_every": 3, "train.keep_last": 8, "train.threads": 1}


def _launch(out, steps=6, env=None, resume=None, timeout=600):
    args = [_launcher(), "--num_gpus", "2", "--master_port", str(_free_port()), "hybengine/train.py",
            *tiny_overrides(out, steps=steps, **DS)]
    return run_cli(args + (["--resume", str(resume)] if resume else []), env=env, timeout=timeout)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted 2-rank run: (its folder, its launcher's output)."""
    out = tmp_path_factory.mktemp("straight")
    r = _launch(out, steps=24)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return out, r.stdout + r.stderr


def _assert_same_as_straight(straight, resumed: dict) -> None:
    a = load_weights(straight[0] / "checkpoints" / "step_00000006")
    assert a["step"] == resumed["step"] == 6
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], resumed[part][k]), f"{part}.{k} differs after resume"


def test_two_rank_zero2_loss_falls(straight):
    out, log = straight
    assert "backend deepspeed, 2 rank(s) on cpu" in log
    assert "shm_comm" not in log  # the inference-only comm op is not built (distributed._skip_shm_comm_build)
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 6
    assert sum(losses[-2:]) / 2 < 0.8 * losses[0], losses
    snap = out / "checkpoints" / "step_00000024"
    assert (snap / "rank0_state.pt").is_file() and (snap / "rank1_state.pt").is_file()
    assert load_weights(out)["step"] == 24


def test_one_rank_killed_stops_the_other_and_resumes_exactly(straight, tmp_path):
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
    _assert_same_as_straight(straight, load_weights(tmp_path))
    print(f"one-rank kill: launcher returned after {elapsed:.0f} s (start-up included)")


def test_two_node_launch_over_localhost_killed_and_resumed_exactly(straight, tmp_path):
    """Item 18: DeepSpeed's multi-node mode, one CPU rank per "node" (a hostfile of two hosts, both this
    machine), each node's launcher started as on a cluster without ssh (`--no_ssh --node_rank`; with
    ssh the launcher starts the same command on each host through pdsh). Both ranks are SIGKILLed after
    step 4 (the whole job lost, as by a scheduler); each node's launcher fails, the step-3 snapshot is
    the one left, and --resume to step 6 ends bit for bit where the single-node 2-rank run is."""
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")
    port = str(_free_port())
    out = tmp_path / "run"

    def launch_nodes(env: dict, resume: bool) -> list[tuple[int, str]]:
        procs = [subprocess.Popen([_launcher(), "--hostfile", str(hostfile), "--no_ssh", "--node_rank", str(n),
                                   "--master_addr", "127.0.0.1", "--master_port", port, "hybengine/train.py",
                                   *tiny_overrides(out, **DS), *(["--resume", str(out)] if resume else [])],
                                  cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for n in (0, 1)]
        logs = [p.communicate(timeout=600)[0] for p in procs]
        return [(p.returncode, log) for p, log in zip(procs, logs, strict=True)]

    killed = launch_nodes({"HYBENGINE_KILL_AT_STEP": "4"}, resume=False)
    for n, (code, log) in enumerate(killed):
        assert code != 0, f"node {n}:\n{log[-4000:]}"
    assert "backend deepspeed, 2 rank(s) on cpu" in killed[0][1]
    assert find_snapshot(out).name == "step_00000003"
    resumed = launch_nodes({}, resume=True)
    for n, (code, log) in enumerate(resumed):
        assert code == 0, f"node {n}:\n{log[-4000:]}"
    _assert_same_as_straight(straight, load_weights(out))
