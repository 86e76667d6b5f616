"""Label budgets: deterministic per seed, nested across budgets, clear errors."""
from __future__ import annotations

import pytest

from hybengine.data import DatasetError, labeled_subset

NAMES = [f"t{t:02d}_r{r}c{c}" for t in range(4) for r in range(2) for c in range(4)]


def test_nested_and_deterministic():
    for seed in range(5):
        sets = [labeled_subset(NAMES, b, seed) for b in range(1, len(NAMES) + 1)]
        for small, big in zip(sets, sets[1:], strict=False):
            assert big[: len(small)] == small
        assert sorted(sets[-1]) == sorted(NAMES)
        assert labeled_subset(list(reversed(NAMES)), 5, seed) == sets[4]  # input order is irrelevant
    assert len({tuple(labeled_subset(NAMES, 3, s)) for s in range(10)}) > 5  # seeds differ


@pytest.mark.parametrize("names,budget,match", [
    (NAMES, len(NAMES) + 1, "budget 33 is impossible with 32"),
    (NAMES, 0, "budget 0"),
    ([], 1, "no image names"),
    (["a", "a"], 1, "duplicate"),
])
def test_impossible_budgets(names, budget, match):
    with pytest.raises(DatasetError, match=match):
        labeled_subset(names, budget, 0)


def _classes(names, empty_every=2):
    """Every `empty_every`-th name is pure background; the others hold classes 0, 1 and some 2."""
    return {n: frozenset({0}) if i % empty_every == 0 else frozenset({0, 1} | ({2} if i % 3 else set()))
            for i, n in enumerate(sorted(names))}


def test_foreground_policy_draws_images_that_can_teach_and_stays_nested():
    classes = _classes(NAMES)
    fg = {n for n, c in classes.items() if c != {0}}
    for seed in range(20):
        sets = [labeled_subset(NAMES, b, seed, "foreground", classes) for b in range(1, len(NAMES) + 1)]
        assert set(sets[len(fg) - 1]) == fg  # foreground images first...
        for small, big in zip(sets, sets[1:], strict=False):
            assert big[: len(small)] == small  # ...and nested
        assert sorted(sets[-1]) == sorted(NAMES)
    # the plain draw hits a pure-background single image about half the time; the policy never does
    assert sum(classes[labeled_subset(NAMES, 1, s)[0]] == {0} for s in range(40)) > 5


def test_foreground_policy_needs_classes():
    with pytest.raises(DatasetError, match="needs every name's mask classes"):
        labeled_subset(NAMES, 1, 0, "foreground")
    with pytest.raises(DatasetError, match="policy 'best' is unknown"):
        labeled_subset(NAMES, 1, 0, "best", _classes(NAMES))


def test_coverage_warning():
    from hybengine.data.label_budget import coverage_warning

    classes = {"a": frozenset({0, 1}), "b": frozenset({0, 1, 2}), "c": frozenset({0})}
    assert coverage_warning(["a", "b"], classes, 3) is None
    msg = coverage_warning(["a", "c"], classes, 3)
    assert "holds no pixel of class(es) [2]" in msg


def test_mask_classes_reads_the_masks(tmp_path):
    import numpy as np
    from PIL import Image

    from hybengine.data.label_budget import mask_classes

    (tmp_path / "train" / "masks").mkdir(parents=True)
    Image.fromarray(np.array([[0, 2], [255, 0]], np.uint8)).save(tmp_path / "train" / "masks" / "x.png")
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "train" / "masks" / "y.png")
    assert mask_classes(tmp_path, "train", ["x", "y"], "index", 255) == {"x": frozenset({0, 2}), "y": frozenset({0})}


def test_distinct_subsets_start_from_different_images_and_stay_nested():
    names = [f"img{i:02d}" for i in range(8)]
    plain = [tuple(labeled_subset(names, 1, s)) for s in range(8)]
    assert len(set(plain)) < 8  # the plain draw repeats images across 8 seeds (the finding)
    firsts = [labeled_subset(names, 1, s, distinct=True)[0] for s in range(8)]
    assert sorted(firsts) == names  # 8 seeds, 8 different 1-label sets
    for s in range(8):
        sets = [labeled_subset(names, b, s, distinct=True) for b in range(1, 9)]
        assert all(set(a) < set(b) for a, b in zip(sets, sets[1:], strict=False))
        assert labeled_subset(names, 8, s, distinct=True)[0] == firsts[s]
    classes = {n: frozenset({0, 1}) if i % 2 else frozenset({0}) for i, n in enumerate(names)}
    fg = [labeled_subset(names, 1, s, "foreground", classes, distinct=True)[0] for s in range(4)]
    assert len(set(fg)) == 4 and all(1 in classes[n] for n in fg)  # distinct AND foreground while they last
