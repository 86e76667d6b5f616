"""Label budgets: which N training images are labeled, for a seed.

The first `budget` items of one seeded permutation of the sorted names, so the sets are NESTED:
for a seed, the 5-label set contains the 2-label set, and sweeps over budgets compare like with like.
"""
from __future__ import annotations

import numpy as np

from hybengine.data.errors import DatasetError

_BUDGET_TAG = 3  # first SeedSequence word: apart from the augmentation and permutation streams


def labeled_subset(names: list[str], budget: int, seed: int) -> list[str]:
    """`budget` names picked by `seed` (in permutation order; nested across budgets)."""
    if not names:
        raise DatasetError("labeled_subset: no image names to choose from; check data.root and the split")
    ordered = sorted(names)
    if len(set(ordered)) != len(ordered):
        raise DatasetError("labeled_subset: duplicate names in the list; each image stem must appear once")
    if not 1 <= budget <= len(ordered):
        raise DatasetError(f"labeled_subset: budget {budget} is impossible with {len(ordered)} images; "
                           f"choose a budget in 1..{len(ordered)}")
    perm = np.random.default_rng([_BUDGET_TAG, seed % 2**63]).permutation(len(ordered))
    return [ordered[j] for j in perm[:budget]]
