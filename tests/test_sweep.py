"""The label-budget sweep: plan checks before anything runs, nested subsets, outputs, resume."""
import json
import os
import shutil

import pytest

from hybengine.config import load_config
from hybengine.finetune import sweep as sweep_mod
from hybengine.finetune.runner import prepare_finetune
from hybengine.finetune.sweep import SweepError, parse_inits, plan_sweep, run_config, run_sweep
from hybengine.training_loop import run_training

from tiny_run import DEMO_TARGET, run_cli, tiny_overrides


def small_target(root, n_train: int = 6, n_test: int = 3):
    """A copy of the first tiles of the demo target domain (fast evaluation)."""
    for split, n in (("train", n_train), ("test", n_test)):
        for sub in ("images", "masks"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for img in sorted((DEMO_TARGET / split / "images").iterdir())[:n]:
            shutil.copy(img, root / split / "images" / img.name)
            shutil.copy(DEMO_TARGET / split / "masks" / img.name, root / split / "masks" / img.name)
    return root


def _cfg(tmp_path, **extra):
    over = {"data.root": str(DEMO_TARGET), "sweep.budgets": "[1,2]", "sweep.seeds": "[0,1]",
            "sweep.inits": "[scratch]", "sweep.out_dir": str(tmp_path / "sweep"), "sweep.runner": "sequential",
            "train.ckpt_every": 0, **extra}
    return load_config(None, tiny_overrides(tmp_path / "unused", steps=2, **over))


def test_budget_larger_than_pool_fails_before_anything_runs(tmp_path):
    with pytest.raises(SweepError, match=r"budgets \[99\] exceed the 56 labeled images"):
        run_sweep(_cfg(tmp_path, **{"sweep.budgets": "[1,99]"}), console_logging=False)
    assert not (tmp_path / "sweep").exists()


def test_empty_pool_is_a_clear_error(tmp_path):
    for split in ("train", "test"):
        for sub in ("images", "masks"):
            (tmp_path / "empty" / split / sub).mkdir(parents=True)
    with pytest.raises(SweepError, match="(?s)is unusable.*empty image folder"):
        plan_sweep(_cfg(tmp_path, **{"data.root": str(tmp_path / "empty")}))


def test_inits_are_checked(tmp_path):
    assert parse_inits(["hybrid=runs/x", "scratch", "none="]) == [("hybrid", "runs/x"), ("scratch", ""),
                                                                  ("none", "")]
    for bad, msg in ((["a=x", "a=y"], "repeat"), (["scratch=runs/x"], "takes no checkpoint"),
                     (["a b=x"], "letters, digits")):
        with pytest.raises(SweepError, match=msg):
            parse_inits(bad)
    with pytest.raises(SweepError, match="no complete checkpoint"):
        plan_sweep(_cfg(tmp_path, **{"sweep.inits": f"[gone={tmp_path / 'nowhere'}]"}))
    with pytest.raises(SweepError, match="sweep.seeds is empty"):
        plan_sweep(_cfg(tmp_path, **{"sweep.seeds": "[]"}))


def test_plan_covers_the_grid_with_nested_subsets(tmp_path):
    cfg = _cfg(tmp_path, **{"sweep.budgets": "[1,2,5]", "sweep.seeds": "[0,1,2]"})
    runs, pool = plan_sweep(cfg)
    assert len(runs) == 9 and len({r.out_dir for r in runs}) == 9
    subsets = {(r.budget, r.seed): prepare_finetune(run_config(cfg, r), pool)[0].data.labeled_subset for r in runs}
    for seed in (0, 1, 2):
        assert set(subsets[(1, seed)]) < set(subsets[(2, seed)]) < set(subsets[(5, seed)])
    assert subsets[(5, 0)] != subsets[(5, 1)]


def test_cli_reports_sweep_errors():
    res = run_cli(["-m", "hybengine.finetune", "--config", "configs/finetune/scratch_assay_sweep.yaml",
                   "sweep.inits=[scratch]", "sweep.budgets=[1,500]"])
    assert res.returncode == 2 and "sweep error" in res.stderr and "500" in res.stderr


@pytest.mark.slow
def test_sweep_outputs_and_resume(tmp_path, monkeypatch):
    pre = tmp_path / "pre"
    run_training(load_config(None, tiny_overrides(pre, steps=2)), console_logging=False)
    target = str(small_target(tmp_path / "target"))
    cfg = _cfg(tmp_path, **{"sweep.inits": f"[pre={pre},scratch]", "sweep.class_names": "[bg,body,nucleus]",
                            "data.root": target})
    agg = run_sweep(cfg, console_logging=False)
    out = tmp_path / "sweep"
    assert [(a["init"], a["budget"], a["seeds"]) for a in agg] == [
        ("pre", 1, [0, 1]), ("pre", 2, [0, 1]), ("scratch", 1, [0, 1]), ("scratch", 2, [0, 1])]
    rows = (out / "per_image.csv").read_text().splitlines()
    assert rows[0] == "init,budget,seed,image,class,dice,iou,hd95,assd"
    assert len(rows) == 1 + 8 * 3 * 3 and rows[1].startswith("pre,1,0,t02_r0c0,bg,")
    md = (out / "table.md").read_text()
    assert "| pre |" in md and "| scratch |" in md and "2 labels" in md and "±" in md
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "runs" / "pre_b1_s0" / "checkpoints").exists()  # keep_checkpoints=false

    # Interrupted sweep: one result missing. Only that run trains again; the others are untouched.
    (out / "runs" / "pre_b2_s1" / "result.json").unlink()
    stamps = {p: os.stat(p).st_mtime_ns for p in out.glob("runs/*/result.json")}
    calls = []
    real = sweep_mod.run_finetune
    monkeypatch.setattr(sweep_mod, "run_finetune", lambda c, **kw: calls.append(c.train.out_dir) or real(c, **kw))
    agg2 = run_sweep(cfg, console_logging=False)
    assert calls == [str(out / "runs" / "pre_b2_s1")]
    assert all(os.stat(p).st_mtime_ns == t for p, t in stamps.items())
    assert [a["dice_mean"] for a in agg2] == pytest.approx([a["dice_mean"] for a in agg])

    # Bookkeeping keys (threads, logging) do not make a finished run stale.
    calls.clear()
    run_sweep(_cfg(tmp_path, **{"sweep.inits": f"[pre={pre},scratch]", "sweep.class_names": "[bg,body,nucleus]",
                                "data.root": target, "train.threads": 1, "train.log_every": 7}), console_logging=False)
    assert calls == []

    # A folder holding a result of another config is refused, not silently reused.
    changed = _cfg(tmp_path, **{"sweep.inits": f"[pre={pre},scratch]", "optim.lr": 0.5, "data.root": target})
    with pytest.raises(SweepError, match=r"different config \(optim.lr differ"):
        run_sweep(changed, console_logging=False)
    assert json.loads((out / "runs" / "scratch_b1_s0" / "result.json").read_text())["init"] == "scratch"


REPORTS = ("runs.csv", "per_image.csv", "table.csv", "table.md")


def _reports(folder):
    return {name: (folder / name).read_text() for name in REPORTS}


@pytest.mark.parametrize("runner, kills", [
    ("sequential", [{"HYBENGINE_KILL_AT_STEP": "2"}, {"HYBENGINE_KILL_AT_FILE": "result.json:2"},
                    {"HYBENGINE_KILL_AT_FILE": "runs.csv"}]),
    ("batched", [{"HYBENGINE_KILL_AT_FILE": "result.json:2"}]),
])
def test_sweep_killed_at_several_points_reruns_to_the_same_reports(runner, kills, tmp_path):  # issue 26
    """SIGKILL in a fine-tune's training, while a result is written (the group's second member, for the
    batched runner) and while the reports are written; each rerun goes on, the last one finishes, and its
    runs.csv, per_image.csv and tables are byte for byte those of an uninterrupted sweep."""
    target = small_target(tmp_path / "target", n_train=4, n_test=2)
    over = tiny_overrides(tmp_path / "unused", steps=2, **{
        "data.root": str(target), "sweep.budgets": "[1]", "sweep.seeds": "[0,1]", "sweep.inits": "[scratch]",
        "sweep.out_dir": str(tmp_path / "sweep"), "sweep.runner": runner, "train.ckpt_every": 1})
    run_sweep(load_config(None, over), console_logging=False)
    straight = _reports(tmp_path / "sweep")
    shutil.rmtree(tmp_path / "sweep")
    for env in kills:
        r = run_cli(["-m", "hybengine.finetune.sweep", *over], env=env)
        assert r.returncode == -9, (env, r.stderr[-3000:])
    assert sweep_mod.main(["--resume", str(tmp_path / "sweep")]) == 0  # its sweep.yaml alone
    assert _reports(tmp_path / "sweep") == straight
    assert not any((tmp_path / "sweep" / "runs").glob("*/checkpoints"))  # none left from the kills
