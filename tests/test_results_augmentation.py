"""The augmentation results page (docs/results/augmentation/) is generated from its committed CSV."""
import csv
import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("measure_augmentation", REPO / "scripts/measure_augmentation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_page_and_contrasts_are_generated_from_the_csv():
    m = _module()
    contrasts, page = m.render()
    assert m.PAGE.read_text() == page, "run python scripts/measure_augmentation.py"
    assert m.CONTRASTS.read_text() == contrasts, "run python scripts/measure_augmentation.py"


def test_contrasts_are_paired_means_of_the_csv():
    m = _module()
    rows = list(csv.DictReader(m.CSV.open()))
    score = {(r["arm"], int(r["budget"]), int(r["seed"])): float(r["mean_fg_dice"]) for r in rows}
    table = m.contrasts(m.records())
    assert table, "the CSV holds no budget"
    for t in table:
        seeds = sorted(s for a, b, s in score if a == "augmented" and b == t["budget"] and ("plain", b, s) in score)
        d = [score["augmented", t["budget"], s] - score["plain", t["budget"], s] for s in seeds]
        assert t["label_seeds"] == len(seeds) > 0
        assert abs(t["mean"] - sum(d) / len(d)) < 1e-12
        assert t["ci_low"] <= t["mean"] <= t["ci_high"]


def test_both_arms_train_on_the_same_labeled_images():
    m = _module()
    labeled = {}
    for r in csv.DictReader(m.CSV.open()):
        labeled.setdefault((int(r["budget"]), int(r["seed"])), {})[r["arm"]] = r["labeled"]
    for key, arms in labeled.items():
        assert len(set(arms.values())) == 1, f"budget, seed {key}: the arms trained on different images {arms}"


def test_the_augmented_arm_is_the_preset_and_the_declaration_differs_only_there():
    from hybengine.config import load_config

    m = _module()
    preset = load_config(REPO / "configs/finetune/scratch_assay_oblique_few_labels.yaml").data
    overrides = dict(kv.split("=") for kv in m.PRESET.split())
    assert {k: float(v) for k, v in overrides.items()} == {
        f"data.{k}": float(getattr(preset, k)) for k in ("aug_scale", "aug_rotate", "aug_elastic", "aug_gamma",
                                                          "aug_noise", "aug_blur")}
    plain = load_config(REPO / m.DECLARATION)
    augmented = load_config(REPO / m.DECLARATION, m.PRESET.split())
    assert plain.sweep.inits == ["scratch"] and plain.sweep.budgets == [1, 2, 5]
    assert all(getattr(plain.data, k.split(".")[1]) == 0 for k in overrides)
    assert [f for f in plain.data.__dataclass_fields__ if getattr(plain.data, f) != getattr(augmented.data, f)] == [
        k.split(".")[1] for k in overrides]
    assert (plain.model, plain.train, plain.optim) == (augmented.model, augmented.train, augmented.optim)
