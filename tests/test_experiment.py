"""The experiment driver end to end on a tiny simulated pair, and the source-validation selection."""
import json
import shutil
from pathlib import Path

import pytest
import yaml

from hybengine.config import ConfigError
from hybengine.experiment import pipeline as experiment
from hybengine.experiment import selection
from hybengine.runtime.checkpoint import load_weights

REPO = Path(__file__).resolve().parents[1]

ROOT = Path(__file__).resolve().parents[1]
TINY = ["train.batch_size=2", "train.log_every=1", "optim.warmup_steps=1", "model.channels=8", "train.threads=1"]


def tiny_spec(tmp_path: Path) -> dict:
    data = tmp_path / "data"
    return {
        "simulate": {"root": str(data), "seed": 0, "source_train": 6, "source_test": 2, "source_val": 3,
                     "target_train": 4, "target_test": 2, "scene": {"size": 32, "empty_fraction": 0.0}},
        "pretrain": {"config": str(ROOT / "configs/pretrain/simulated_pair.yaml"), "modes": ["hybrid", "supervised"],
                     "seeds": [0], "overrides": [f"data.root={data}/source", "train.steps=2", "train.ckpt_every=2",
                                                 *TINY]},
        "select": {"seed": 100, "split": "val", "grid": {"hybrid": {"objective.w_mask": [0.2, 1.0]}}},
        "finetune": {"config": str(ROOT / "configs/finetune/simulated_pair_sweep.yaml"),
                     "overrides": [f"data.root={data}/target", "train.steps=1", "finetune.steps_per_label=0",
                                   "sweep.budgets=[1]", "sweep.seeds=[0,1]", *TINY]},
        "analysis": {"contrasts": [["hybrid", "supervised"]], "classes": [1, 2], "n_boot": 200,
                     "class_names": ["background", "cell body", "nucleus"]},
        "out_dir": str(tmp_path / "out"), "results_dir": str(tmp_path / "results"),
    }


def test_experiment_selects_on_source_validation_then_pretrains_sweeps_and_analyses(tmp_path):
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(tiny_spec(tmp_path)))
    assert experiment.main(["--config", str(path)]) == 0
    out, results = tmp_path / "out", tmp_path / "results"
    picked = json.loads((out / "select.json").read_text())
    scores = {r["overrides"][0]: r["score"] for r in picked["candidates"]}
    assert set(scores) == {"objective.w_mask=0.2", "objective.w_mask=1.0"}
    best = max(scores, key=lambda k: (scores[k], k == "objective.w_mask=0.2"))  # ties: the first candidate
    assert picked["chosen"] == {"hybrid": [best]}
    # the winner's setting is what the experiment's hybrid run trained with; supervised is untouched
    saved = load_weights(out / "pretrain_hybrid_p0")["config"]
    assert saved["objective"]["w_mask"] == float(best.split("=")[1]) and saved["train"]["seed"] == 0
    assert load_weights(out / "pretrain_select_hybrid_0")["config"]["train"]["seed"] == 100
    for name in ("select.md", "source_scores.md", "contrasts.md", "table.md", "command.md"):
        assert (results / name).is_file(), name
    assert "hybrid_p0" in (results / "source_scores.md").read_text()
    runs = sorted(p.name for p in (out / "sweep" / "runs").iterdir())
    assert len(runs) == 3 * 2  # (hybrid, supervised, scratch) x 2 label seeds at budget 1
    # a rerun finds every part finished and redoes nothing
    before = (out / "pretrain_hybrid_p0" / "checkpoints" / "latest").read_text()
    assert experiment.main(["--config", str(path)]) == 0
    assert (out / "pretrain_hybrid_p0" / "checkpoints" / "latest").read_text() == before


def test_choose_takes_the_best_source_score_and_the_first_on_ties(tmp_path):
    grid = {"hybrid": {"objective.clean_share": [0.25, 0.5], "objective.w_mask": [0.2, 1.0]}}
    select = selection.check_select({"grid": grid}, ["hybrid"], [0], "experiment.yaml")  # defaults filled in
    plan = selection.plan(select)
    assert [over for _, _, over in plan][1] == ["objective.clean_share=0.25", "objective.w_mask=1.0"]
    for (name, _, _), score in zip(plan, [0.5, 0.7, 0.7, 0.1], strict=True):
        folder = tmp_path / f"pretrain_{name}"
        folder.mkdir()
        (folder / "source_val.json").write_text(json.dumps({"mean_foreground_dice": score, "dice": [1, score]}))
    assert selection.choose(select, tmp_path) == {"hybrid": ["objective.clean_share=0.25", "objective.w_mask=1.0"]}
    assert "**objective.clean_share=0.25 objective.w_mask=1.0**" in (tmp_path / "select.md").read_text()


@pytest.mark.parametrize("select, match", [
    ({"seed": 0, "grid": {"hybrid": {"objective.w_mask": [1.0]}}}, "one of pretrain.seeds"),
    ({"grid": {"denoise": {"objective.w_mask": [1.0]}}}, r"select.grid.denoise: not one of pretrain.modes"),
    ({"grid": {"hybrid": {"objective.w_mask": []}}}, "non-empty lists"),
    ({"grid": {"hybrid": {"objective.w_mask": [1.0]}}, "metric": "iou"}, "section 'select' takes"),
])
def test_bad_select_sections_are_named(tmp_path, select, match):
    spec = tiny_spec(tmp_path)
    spec["select"] = select
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=match):
        experiment.load_experiment(path)


def test_experiment_killed_in_pretraining_and_in_the_sweep_reruns_to_the_same_reports(tmp_path):  # issue 26
    """SIGKILL before the first pretraining snapshot and while the sweep writes its second result; the
    reruns (the last with `--resume <out_dir>` alone) finish with the reports of an uninterrupted run."""
    from tiny_run import run_cli

    spec = tiny_spec(tmp_path)
    del spec["select"], spec["analysis"]
    spec["pretrain"]["modes"] = ["hybrid"]
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(spec))
    names = ("runs.csv", "per_image.csv", "table.csv", "table.md")
    assert experiment.main(["--config", str(path)]) == 0
    straight = {n: (tmp_path / "results" / n).read_text() for n in names}
    for folder in ("out", "results"):
        shutil.rmtree(tmp_path / folder)
    for env in ({"HYBENGINE_KILL_AT_STEP": "1"}, {"HYBENGINE_KILL_AT_FILE": "result.json:2"}):
        r = run_cli(["-m", "hybengine.experiment", "--config", str(path)], env=env)
        assert r.returncode == -9, (env, r.stderr[-3000:])
    assert not (tmp_path / "results" / "table.md").exists()
    assert experiment.main(["--resume", str(tmp_path / "out")]) == 0
    assert {n: (tmp_path / "results" / n).read_text() for n in names} == straight


def test_variants_name_their_pretrainings_and_fine_tunes():
    """pretrain.variants add pretrainings of a mode with overrides of their own; finetune.variants fine-tune a
    start's checkpoints again under their own overrides; both get <name>_p<seed> names (issue 27)."""
    spec = experiment.load_experiment(REPO / "configs/experiments/simulated_shortcut.yaml")
    plan = experiment.pretrain_plan(spec)
    assert [name for name, _, _ in plan[:4]] == ["hybrid_p0", "supervised_p0", "hybrid-tgt_p0", "denoise-tgt_p0"]
    over = experiment.kind_overrides(spec, "hybrid-tgt")
    assert over[0] == "objective.mode=hybrid" and "data.unlabeled_share=0.25" in over
    assert experiment.kind_overrides(spec, "supervised") == ["objective.mode=supervised"]
    folders = {name: Path(f"runs/x/pretrain_{name}") for name, _, _ in plan}
    (inits, extra), = experiment.finetune_variants(spec, folders)
    assert inits == [f"hybrid-tgt-keep_p{p}=runs/x/pretrain_hybrid-tgt_p{p}" for p in range(3)]
    assert extra == ["finetune.unlabeled_share=0.5"]
    names = experiment.start_names(spec)
    assert names[-4:] == ["hybrid-tgt-keep_p0", "hybrid-tgt-keep_p1", "hybrid-tgt-keep_p2", "scratch"]


def test_starts_are_scored_on_the_selection_split_else_val_else_test(tmp_path):
    spec = tiny_spec(tmp_path)
    source = tmp_path / "data" / "source"
    spec["pretrain"]["overrides"] = [f"data.root={source}"]
    assert experiment.source_split(spec) is None  # no split there at all
    (source / "val").mkdir(parents=True)
    assert experiment.source_split(spec) == "val"  # the selection's split
    del spec["select"]
    (source / "test").mkdir()
    assert experiment.source_split(spec) == "val"
    (source / "val").rmdir()
    assert experiment.source_split(spec) == "test"  # e.g. the scratch assay's fluorescence domain


def test_a_variant_can_start_from_an_earlier_snapshot_and_bad_variants_are_named(tmp_path):
    """finetune.variants.<name>.step: the start's snapshot at that step (a start matched on source score)."""
    spec = tiny_spec(tmp_path)
    spec["finetune"]["variants"] = {"supervised-matched": {"start": "supervised", "step": 100}}
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(spec))
    spec = experiment.load_experiment(path)
    folders = {"hybrid_p0": Path("o/pretrain_hybrid_p0"), "supervised_p0": Path("o/pretrain_supervised_p0")}
    (inits, extra), = experiment.finetune_variants(spec, folders)
    assert inits == ["supervised-matched_p0=o/pretrain_supervised_p0/checkpoints/step_00000100"] and extra == []
    for bad in ({"start": "denoise"}, {"start": "supervised", "snapshot": 100}):
        spec["finetune"]["variants"] = {"x": bad}
        path.write_text(yaml.safe_dump(spec))
        with pytest.raises(ConfigError, match="finetune.variants.x takes start"):
            experiment.load_experiment(path)
