"""The demo job, shrunk: it estimates its time from its first steps, pairs hybrid and scratch per seed,
and writes its summary."""
import json

import pytest

from hybengine import demo

pytestmark = pytest.mark.slow

TINY = {"model.channels": 8, "model.channel_mult": "[1,2]", "model.groups": 4, "data.crop": 32,
        "train.batch_size": 2, "train.progress": "false", "train.log_every": 4}


def test_demo_estimates_pairs_and_summarises(tmp_path, capsys):
    over = [f"pretrain.{k}={v}" for k, v in {**TINY, "train.steps": 8, "train.ckpt_every": 8}.items()]
    over += [f"finetune.{k}={v}" for k, v in {**TINY, "train.steps": 2}.items()]
    assert demo.main([*over, "--out", str(tmp_path), "--seeds", "0"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "s per pretraining step here, so the whole job takes about" in err
    assert "more for the other 1 fine-tunes" in err
    assert "hybrid - scratch mean foreground Dice" in err and "95% CI" in err and "over 1 seed(s)" in err
    assert "demo: took" in err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert sorted((r["init"], r["seed"]) for r in summary) == [("hybrid", 0), ("scratch", 0)]
    assert (tmp_path / "pretrain_hybrid" / "progress.png").is_file()
    # run again into the same folder: the finished pretraining and fine-tunes are reused, not refused
    weights = (tmp_path / "pretrain_hybrid" / "checkpoints" / "step_00000008" / "weights.pt").read_bytes()
    assert demo.main([*over, "--out", str(tmp_path), "--seeds", "0"]) == 0
    assert "demo: took" in " ".join(capsys.readouterr().err.split())
    assert (tmp_path / "pretrain_hybrid" / "checkpoints" / "step_00000008" / "weights.pt").read_bytes() == weights
