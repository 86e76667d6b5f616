"""A sweep under torchrun: two CPU ranks share the fine-tunes, rank 0 writes the reports, and every
result equals the one-process sweep's bit for bit."""
import json
import socket

import pytest
from test_sweep import small_target

from tiny_run import run_cli, tiny_overrides


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # three processes: one sweep, then two torchrun ranks
def test_two_rank_sweep_equals_one_process(tmp_path):
    data = small_target(tmp_path / "data", n_train=4)
    over = tiny_overrides(tmp_path / "unused", steps=2, **{
        "data.root": str(data), "sweep.budgets": "[1,2]", "sweep.seeds": "[0]", "sweep.inits": "[scratch]",
        "sweep.runner": "sequential", "train.ckpt_every": 0, "train.threads": 1})
    one = run_cli(["-m", "hybengine.finetune", *over, f"sweep.out_dir={tmp_path / 'one'}"],
                  env={"OMP_NUM_THREADS": "1"})
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_cli(["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
                   "-m", "hybengine.finetune", *over, f"sweep.out_dir={tmp_path / 'two'}"],
                  env={"OMP_NUM_THREADS": "1"})
    assert two.returncode == 0, two.stderr[-3000:]
    assert "rank 0 of 2: its 1 run(s) done" in two.stderr  # rank 1 logs warnings only
    runs = sorted(p.name for p in (tmp_path / "one" / "runs").iterdir())
    assert len(runs) == 2 and runs == sorted(p.name for p in (tmp_path / "two" / "runs").iterdir())
    for name in runs:
        a, b = (json.loads((tmp_path / w / "runs" / name / "result.json").read_text()) for w in ("one", "two"))
        assert a["per_image"] == b["per_image"] and a["dice"] == b["dice"], name
    assert (tmp_path / "one" / "table.csv").read_text() == (tmp_path / "two" / "table.csv").read_text()
