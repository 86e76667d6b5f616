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
