"""The demo job, shrunk: it estimates its time from its first steps, scores both pretrained starts zero-shot,
fine-tunes hybrid keeping its start and the others the usual way, pairs hybrid with supervised and scratch
per seed, and writes its summary."""
import json

import pytest
import yaml

from hybengine import demo

pytestmark = pytest.mark.slow

TINY = {"model.channels": 8, "model.channel_mult": "[1,2]", "model.groups": 4, "data.crop": 32,
        "train.batch_size": 2, "train.progress": "false", "train.log_every": 4, "train.threads": 1}


def test_demo_estimates_pairs_and_summarises(tmp_path, capsys):
    over = [f"pretrain.{k}={v}" for k, v in {**TINY, "train.steps": 8, "train.ckpt_every": 8}.items()]
    over += [f"finetune.{k}={v}" for k, v in {**TINY, "train.steps": 2, "finetune.steps_per_label": 0}.items()]
    assert demo.main([*over, "--out", str(tmp_path), "--seeds", "0"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "s per pretraining step here, so the whole job takes about" in err
    assert "zero-shot (no label): hybrid - supervised mean foreground Dice" in err
    for other in ("supervised", "scratch"):
        assert f"1 label(s): hybrid - {other} mean foreground Dice" in err and "over 1 seed(s)" in err
    assert "hybrid: 1-label fine-tune - its zero-shot" in err and "95% CI" in err
    assert "demo: took" in err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert sorted((r["init"], r["budget"], r["seed"]) for r in summary) == [
        ("hybrid", 0, 0), ("hybrid", 1, 0), ("scratch", 1, 0), ("supervised", 0, 0), ("supervised", 1, 0)]
    for kind, mode in (("hybrid", "hybrid"), ("supervised", "supervised")):  # the experiment's pretrainings
        saved = (tmp_path / f"pretrain_{kind}" / "config.yaml").read_text()
        assert f"mode: {mode}" in saved and "w_mask: 1.0" in saved
    rules = {init: yaml.safe_load((tmp_path / f"finetune_{init}_b1_s0" / "config.yaml").read_text())["finetune"]
             for init in ("hybrid", "supervised", "scratch")}  # each start under the rule that suits it
    assert rules["hybrid"]["distill"] == 1.0 and rules["supervised"]["distill"] == rules["scratch"]["distill"] == 0
    # run again into the same folder: the finished pretrainings and fine-tunes are reused, not refused
    weights = (tmp_path / "pretrain_hybrid" / "checkpoints" / "step_00000008" / "weights.pt").read_bytes()
    assert demo.main([*over, "--out", str(tmp_path), "--seeds", "0"]) == 0
    assert "demo: took" in " ".join(capsys.readouterr().err.split())
    assert (tmp_path / "pretrain_hybrid" / "checkpoints" / "step_00000008" / "weights.pt").read_bytes() == weights
