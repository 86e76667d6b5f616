"""The `hybengine` command: help of every subcommand, `validate` on a broken folder, `info` on CPU."""
from __future__ import annotations

import re

import numpy as np
import pytest
from test_data_helpers import write_pair, write_png

from hybengine import console

from tiny_run import DEMO_TARGET, REPO, run_cli

GOOD = np.full((16, 20), 100, np.uint8)


def test_top_level_help_lists_every_command(capsys):
    assert console.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("train", "finetune", "sweep", "experiment", "predict", "sample", "validate", "info"):
        assert re.search(rf"^  {name} +\S", out, re.M), name
    assert console.main([]) == 2 and console.main(["nonsense"]) == 2
    assert "unknown command 'nonsense'" in capsys.readouterr().err


@pytest.mark.parametrize("name", list(console.COMMANDS))
def test_subcommand_help(name, capsys):
    with pytest.raises(SystemExit) as e:
        console.main([name, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: hybengine {name}"), out[:80]
    assert len(out.splitlines()) >= 4  # options described, not a bare usage line


def test_validate_lists_every_problem_and_fails(tmp_path, capsys):
    write_pair(tmp_path, "good", GOOD, np.zeros((16, 20), np.uint8))
    write_png(tmp_path / "train" / "images" / "lonely.png", GOOD)  # no mask
    write_pair(tmp_path, "wide", GOOD, np.zeros((16, 21), np.uint8))  # size mismatch
    bad = np.zeros((16, 20), np.uint8)
    bad[0, 0] = 7
    write_pair(tmp_path, "label", GOOD, bad)  # label outside 0..2
    (tmp_path / "train" / "images" / "broken.png").write_bytes(b"not a png")
    write_png(tmp_path / "train" / "masks" / "broken.png", np.zeros((16, 20), np.uint8))
    # no test split at all
    assert console.main(["validate", str(tmp_path), "data.num_classes=3"]) == 1
    out = capsys.readouterr()
    for needle in ("lonely.png: no mask", "masks/wide.png: mask size 21x16", "masks/label.png", "[7]",
                   "images/broken.png", "test/images: image folder does not exist"):
        assert needle in out.out, needle
    assert "6 problems" in out.err
    assert console.main(["validate", str(tmp_path), "data.num_classes=one"]) == 2


def test_validate_passes_a_good_folder(capsys):
    assert console.main(["validate", str(DEMO_TARGET)]) == 0
    out = capsys.readouterr().out
    assert "train: 56 image/mask pairs, usable" in out and "test: 24 image/mask pairs, usable" in out


def test_info_runs_without_gpu(capsys):
    assert console.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch " in out and "deepspeed" in out and "nvidia.dali" in out and "apex" in out
    assert re.search(r"cpu +group_norm_silu +(fused|reference)", out)


def test_module_entry_and_installed_script():
    proc = run_cli(["-m", "hybengine.console", "info"], env={"CUDA_VISIBLE_DEVICES": ""}, timeout=120)
    assert proc.returncode == 0 and "cuda: no GPU visible" in proc.stdout, proc.stderr[-2000:]
    setup = (REPO / "setup.py").read_text()
    assert '"hybengine=hybengine.console:main"' in setup  # `pip install -e .` puts `hybengine` on PATH
