"""Label budgets: which N training images are labeled, for a seed.

One seeded permutation of the sorted names; a budget takes its first `budget` items, so the sets are
NESTED: for a seed, the 5-label set contains the 2-label set, and sweeps over budgets compare like
with like. With `classes` (each name's set of mask labels, `mask_classes`) the "foreground" policy
orders the permutation so that images holding a class other than 0 come first (their own order kept),
then the rest: a 1-label run never trains on pure background while the pool has foreground, and the
sets stay nested. With `distinct` the seed's first image (its 1-label set) is item `seed mod n` of one
seed-independent permutation (of the foreground images first under "foreground"), the rest follows the
seed's own order: seeds 0..n-1 start from n different images, still nested. `coverage_warning` says when
a subset misses a class.
"""
from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

import numpy as np

from hybengine.data.errors import DatasetError
from hybengine.data.image_io import read_mask

_BUDGET_TAG = 3  # first SeedSequence word: apart from the augmentation and permutation streams
_SHARED = 2**62 + 1  # second word of the seed-independent permutation (`distinct`); no seed reaches it
POLICIES = ("foreground", "any")
log = logging.getLogger("hybengine.data.label_budget")


def labeled_subset(names: list[str], budget: int, seed: int, policy: str = "any",
                   classes: dict[str, frozenset[int]] | None = None, distinct: bool = False) -> list[str]:
    """`budget` names picked by `seed` (in permutation order; nested across budgets). policy
    "foreground" needs `classes` ({name: labels in its mask}) and puts names with a label > 0 first;
    `distinct`: distinct 1-label sets across seeds (module docstring)."""
    if not names:
        raise DatasetError("labeled_subset: no image names to choose from; check data.root and the split")
    ordered = sorted(names)
    if len(set(ordered)) != len(ordered):
        raise DatasetError("labeled_subset: duplicate names in the list; each image stem must appear once")
    if not 1 <= budget <= len(ordered):
        raise DatasetError(f"labeled_subset: budget {budget} is impossible with {len(ordered)} images; "
                           f"choose a budget in 1..{len(ordered)}")
    if policy not in POLICIES:
        raise DatasetError(f"labeled_subset: policy {policy!r} is unknown; choose one of {', '.join(POLICIES)}")
    perm = [ordered[j] for j in np.random.default_rng([_BUDGET_TAG, seed % 2**63]).permutation(len(ordered))]
    if policy == "foreground":
        if classes is None or set(ordered) - set(classes):
            raise DatasetError("labeled_subset: the foreground policy needs every name's mask classes")
        fg = {n for n in perm if any(k > 0 for k in classes[n])}
        perm = [n for n in perm if n in fg] + [n for n in perm if n not in fg]
    if distinct:
        shared = [ordered[j] for j in np.random.default_rng([_BUDGET_TAG, _SHARED]).permutation(len(ordered))]
        if policy == "foreground":
            shared = [n for n in shared if n in fg] or shared
        lead = shared[seed % len(shared)]
        perm = [lead] + [n for n in perm if n != lead]
    return perm[:budget]


def coverage_warning(subset: list[str], classes: dict[str, frozenset[int]], num_classes: int) -> str | None:
    """A one-line warning when the subset's masks do not hold every class 0..K-1, else None."""
    seen = set().union(*(classes[n] for n in subset)) if subset else set()
    missing = [k for k in range(num_classes) if k not in seen]
    if not missing:
        return None
    return (f"label subset {subset} holds no pixel of class(es) {missing}: a fine-tune on it cannot learn "
            f"{'them' if len(missing) > 1 else 'it'} (Dice of such a class will be near 0)")


def mask_classes(root: str | Path, split: str, names: list[str], mask_format: str,
                 ignore_index: int) -> dict[str, frozenset[int]]:
    """{name: the labels present in `<root>/<split>/masks/<name>.png`} (ignore_index left out); cached
    per file and modification time, so sweeps read each mask once."""
    base = Path(root) / split / "masks"
    out = {}
    for n in names:
        path = base / f"{n}.png"
        out[n] = _classes_of(str(path), path.stat().st_mtime_ns, mask_format, ignore_index)
    return out


@lru_cache(maxsize=65536)
def _classes_of(path: str, mtime_ns: int, mask_format: str, ignore_index: int) -> frozenset[int]:
    labels = np.unique(read_mask(path, mask_format))
    return frozenset(int(v) for v in labels if v != ignore_index)
