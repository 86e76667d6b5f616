"""Paired statistics over seeds for fine-tune sweeps: is start A better than start B at a budget?

Design: a fine-tune is one (start, pretraining seed p, label seed s, budget) cell. Starts that come
from a pretraining carry p in their init name (`hybrid_p1`; `split_init`), scratch carries none. For a
contrast A - B at one budget the paired difference of cell (p, s) is

    d[p, s] = score(A, p, s) - score(B, p, s)     (same label subset and fine-tune seed s; same p where
                                                   both are pretrained, and B = scratch pairs with every p)

- estimate: mean of d over the (p, s) grid;
- 95 % interval: percentile bootstrap of that mean, resampling pretraining seeds and label seeds with
  replacement (both axes of the grid, independently: a two-way bootstrap), `n_boot` draws, seeded;
- test: exact two-sided Wilcoxon signed-rank over label seeds, on d averaged over p (label seeds are
  the independent units: every start of a label seed trains on the same images); zeros dropped, ties
  given mid-ranks, the null distribution enumerated over the 2^n sign flips of those ranks;
- at the unit of the pretraining seed (a claim about a pretraining METHOD, not about these checkpoints):
  a hierarchical bootstrap (draw pretraining seeds with replacement, then label seeds with replacement
  within each drawn one; `hierarchical_ci`), and the sign of each pretraining seed's mean difference with
  an exact two-sided sign test (`sign_per_pretraining_seed`). Beside them the label-seed interval
  (`label_seed_ci`: label seeds resampled, d averaged over p) is conditional on the checkpoints: it knows
  nothing of how another pretraining run would have come out;
- Holm's step-down correction over the family of tests named in the experiment config.

No scipy (not a declared dependency): the pieces are small and tested on cases with known answers
(tests/test_finetune_stats.py).
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable

import numpy as np

_PRETRAIN_SEED = re.compile(r"^(?P<start>.+)_p(?P<p>\d+)$")


def split_init(name: str) -> tuple[str, int | None]:
    """"hybrid_p2" -> ("hybrid", 2); "scratch" or "hybrid" -> (name, None)."""
    m = _PRETRAIN_SEED.match(name)
    return (m["start"], int(m["p"])) if m else (name, None)


def score_of(metric: str, class_index: int | None = None) -> Callable[[dict], float]:
    """A record -> its score: `mean_fg_<metric>`, or with class_index the mean over test images of
    that class's metric (record[metric][k])."""
    if class_index is None:
        return lambda r: float(r[f"mean_fg_{metric}"])
    return lambda r: float(r[metric][class_index])


def paired_grid(records: list[dict], a: str, b: str, budget: int, score: Callable[[dict], float]
                ) -> tuple[np.ndarray, list, list[int]]:
    """(d (P, S), pretraining seeds, label seeds) for A - B at `budget` (see the module docstring).
    Cells missing on either side are left out (only label seeds complete for every p are kept)."""
    cells: dict[str, dict[tuple, float]] = {a: {}, b: {}}
    for r in records:
        start, p = split_init(r["init"])
        if start in cells and r["budget"] == budget:
            cells[start][(p, r["seed"])] = score(r)
    pa = sorted({p for p, _ in cells[a]}, key=lambda v: -1 if v is None else v)
    pb = sorted({p for p, _ in cells[b]}, key=lambda v: -1 if v is None else v)
    if pa == [None] or pb == [None]:
        ps = pa if pb == [None] else pb
    else:
        ps = sorted(set(pa) & set(pb))

    def value(side: str, side_ps: list, p, s) -> float | None:
        return cells[side].get((p if side_ps != [None] else None, s))

    seeds = sorted({s for _, s in cells[a]} & {s for _, s in cells[b]})
    seeds = [s for s in seeds if all(value(a, pa, p, s) is not None and value(b, pb, p, s) is not None
                                     for p in ps)]
    d = np.array([[value(a, pa, p, s) - value(b, pb, p, s) for s in seeds] for p in ps], dtype=np.float64)
    return d.reshape(len(ps), len(seeds)), ps, seeds


def bootstrap_ci(d: np.ndarray, n_boot: int = 10000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the grid mean, resampling rows and columns of d (P, S) with replacement."""
    d = np.atleast_2d(np.asarray(d, dtype=np.float64))
    if d.size == 0:
        return math.nan, math.nan
    (P, S), rng, rows = _row_draws(d, n_boot, seed)
    cols = rng.integers(0, S, (n_boot, S))
    # mean of d[rows][:, cols] = mean over rows of (row means of d restricted to the drawn columns)
    col_means = d[:, cols].mean(axis=2).T  # (n_boot, P): each row's mean over its draw's columns
    return _percentile_interval(np.take_along_axis(col_means, rows, axis=1).mean(axis=1), level)


def hierarchical_ci(d: np.ndarray, n_boot: int = 10000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the grid mean of d (P, S): each draw takes P pretraining seeds (rows) with
    replacement, then for each of them S label seeds (columns) with replacement, its own draw per row."""
    d = np.atleast_2d(np.asarray(d, dtype=np.float64))
    if d.size == 0:
        return math.nan, math.nan
    (P, S), rng, rows = _row_draws(d, n_boot, seed)
    cols = rng.integers(0, S, (n_boot, P, S))
    return _percentile_interval(d[rows[:, :, None], cols].mean(axis=(1, 2)), level)


def _row_draws(d: np.ndarray, n_boot: int, seed: int) -> tuple[tuple[int, int], np.random.Generator, np.ndarray]:
    """(P, S) of d, the seeded generator, and its first draw: n_boot resamples of the P rows."""
    P, S = d.shape
    rng = np.random.default_rng(seed)
    return (P, S), rng, rng.integers(0, P, (n_boot, P))


def _percentile_interval(means: np.ndarray, level: float) -> tuple[float, float]:
    """The central `level` interval of bootstrap means (percentile method)."""
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(lo), float(hi)


def label_seed_ci(d: np.ndarray, n_boot: int = 10000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile interval over label seeds alone, of d (P, S) averaged over its pretraining seeds."""
    d = np.atleast_2d(np.asarray(d, dtype=np.float64))
    return bootstrap_ci(d.mean(axis=0, keepdims=True), n_boot, level, seed) if d.size else (math.nan, math.nan)


def sign_per_pretraining_seed(d: np.ndarray) -> tuple[int, int, float]:
    """(pretraining seeds whose mean difference is > 0, seeds with a non-zero one, exact two-sided sign-test
    p of that count under p = 1/2)."""
    means = np.atleast_2d(np.asarray(d, dtype=np.float64)).mean(axis=1)
    means = means[means != 0]
    n, k = len(means), int((means > 0).sum())
    if n == 0:
        return 0, 0, 1.0
    tail = sum(math.comb(n, i) for i in range(n + 1) if abs(i - n / 2) >= abs(k - n / 2)) / 2 ** n
    return k, n, min(1.0, tail)


def wilcoxon_signed_rank(d: np.ndarray | list[float]) -> tuple[float, float, int]:
    """(W+, exact two-sided p, n used) for the paired differences d; zeros dropped, ties mid-ranked.
    p = P(|W+ - n(n+1)/4| >= observed) under random signs; 1.0 when no difference is non-zero."""
    d = np.asarray(d, dtype=np.float64)
    d = d[d != 0]
    n = len(d)
    if n == 0:
        return 0.0, 1.0, 0
    ranks = _midranks(np.abs(d))
    twice = np.round(2 * ranks).astype(np.int64)  # mid-ranks are multiples of 1/2
    w_plus2 = int(twice[d > 0].sum())
    total = int(twice.sum())
    counts = np.zeros(total + 1, dtype=np.float64)  # counts[w] = sign patterns with 2*W+ = w
    counts[0] = 1.0
    for r in twice:  # each rank joins W+ or not: convolve with (1 at 0, 1 at r); r >= 2
        counts[r:] += counts[:-r].copy()
    probs = counts / counts.sum()
    centre = total / 2
    dev = abs(w_plus2 - centre)
    w = np.arange(total + 1)
    p = float(probs[np.abs(w - centre) >= dev - 1e-9].sum())
    return w_plus2 / 2, min(1.0, p), n


def _midranks(v: np.ndarray) -> np.ndarray:
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(len(v), dtype=np.float64)
    sv = v[order]
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and sv[j + 1] == sv[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order (monotone, capped at 1)."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def contrast(records: list[dict], a: str, b: str, budget: int, score: Callable[[dict], float],
             n_boot: int = 10000, seed: int = 0) -> dict:
    """One contrast A - B at one budget: the estimate, its 95 % interval, the signed-rank test."""
    d, ps, seeds = paired_grid(records, a, b, budget, score)
    if d.size == 0:
        return {"a": a, "b": b, "budget": budget, "pretrain_seeds": 0, "label_seeds": 0, "mean": math.nan,
                "ci_low": math.nan, "ci_high": math.nan, "p": math.nan, "w_plus": math.nan,
                "hier_low": math.nan, "hier_high": math.nan, "label_low": math.nan, "label_high": math.nan,
                "seeds_up": 0, "seeds_nonzero": 0, "sign_p": math.nan}
    lo, hi = bootstrap_ci(d, n_boot=n_boot, seed=seed)
    w_plus, p, _ = wilcoxon_signed_rank(d.mean(axis=0))
    h_lo, h_hi = hierarchical_ci(d, n_boot=n_boot, seed=seed)
    l_lo, l_hi = label_seed_ci(d, n_boot=n_boot, seed=seed)
    up, nonzero, sign_p = sign_per_pretraining_seed(d) if ps != [None] else (0, 0, math.nan)
    return {"a": a, "b": b, "budget": budget, "pretrain_seeds": len(ps), "label_seeds": len(seeds),
            "mean": float(d.mean()), "ci_low": lo, "ci_high": hi, "p": p, "w_plus": w_plus,
            "hier_low": h_lo, "hier_high": h_hi, "label_low": l_lo, "label_high": l_hi,
            "seeds_up": up, "seeds_nonzero": nonzero, "sign_p": sign_p}


def versus_zero_shot(records: list[dict], start: str, budget: int, score: Callable[[dict], float],
                     n_boot: int = 10000, seed: int = 0) -> dict:
    """A start's fine-tune at `budget` minus its own zero-shot score (budget 0, same pretraining seed):
    d[p, s] = score(start_p, budget, s) - score(start_p, 0); mean, hierarchical interval, seeds > 0."""
    zero = {split_init(r["init"])[1]: score(r) for r in records
            if split_init(r["init"])[0] == start and r["budget"] == 0}
    cells: dict = {}
    for r in records:
        name, p = split_init(r["init"])
        if name == start and r["budget"] == budget and p in zero:
            cells.setdefault(p, {})[r["seed"]] = score(r) - zero[p]
    ps = sorted(cells)
    seeds = sorted(set.intersection(*(set(c) for c in cells.values()))) if cells else []
    d = np.array([[cells[p][s] for s in seeds] for p in ps], dtype=np.float64).reshape(len(ps), len(seeds))
    lo, hi = hierarchical_ci(d, n_boot=n_boot, seed=seed) if d.size else (math.nan, math.nan)
    up, nonzero, _ = sign_per_pretraining_seed(d) if d.size else (0, 0, math.nan)
    return {"start": start, "budget": budget, "zero_shot": float(np.mean(list(zero.values()))) if zero else math.nan,
            "mean": float(d.mean()) if d.size else math.nan, "hier_low": lo, "hier_high": hi,
            "seeds_up": up, "seeds_nonzero": nonzero, "pretrain_seeds": len(ps), "label_seeds": len(seeds)}


def paired_contrast(rows: list[dict], a: str, b: str, budget: int | None = None, metric: str = "dice",
                    class_index: int | None = None, n_boot: int = 10000) -> dict:
    """A - B over fine-tune result records (`init`, `budget`, `seed`, `mean_fg_dice`, `dice`, ...):
    {a, b, budget, pretrain_seeds, label_seeds, mean, ci_low, ci_high, p, w_plus}. `budget` None: the
    only budget the records hold (an error if they hold several)."""
    if budget is None:
        budgets = sorted({r["budget"] for r in rows})
        if len(budgets) != 1:
            raise ValueError(f"paired_contrast: the records hold budgets {budgets}; name one")
        budget = budgets[0]
    return contrast(rows, a, b, budget, score_of(metric, class_index), n_boot=n_boot)


def contrast_table(records: list[dict], contrasts: list[tuple[str, str]], budgets: list[int],
                   scores: dict[str, Callable[[dict], float]], family: Callable[[dict], bool] | None = None,
                   n_boot: int = 10000) -> list[dict]:
    """Every (score, contrast, budget) row of `contrast`, plus `p_holm`: Holm over the rows for which
    `family(row)` is true (the tests the experiment config declared), NaN for the others."""
    rows = [{"score": name, **contrast(records, a, b, budget, fn, n_boot=n_boot)}
            for name, fn in scores.items() for a, b in contrasts for budget in budgets]
    members = [i for i, r in enumerate(rows) if (family is None or family(r)) and not math.isnan(r["p"])]
    adjusted = holm([rows[i]["p"] for i in members])
    for r in rows:
        r["p_holm"] = math.nan
    for i, p in zip(members, adjusted, strict=True):
        rows[i]["p_holm"] = p
    return rows


def main(argv: list[str] | None = None) -> int:
    """Re-analyses a committed results folder (runs.csv + per_image.csv): contrasts.{md,csv,png}."""
    import argparse
    from pathlib import Path

    from ..finetune.reports import records_from_csv, write_contrasts

    p = argparse.ArgumentParser(description="paired contrasts of a sweep's results folder")
    p.add_argument("--results", required=True, help="folder holding runs.csv and per_image.csv")
    p.add_argument("--contrasts", nargs="+", required=True, help="a:b pairs, e.g. hybrid:supervised")
    p.add_argument("--classes", type=int, nargs="*", default=[], help="class indices also reported")
    p.add_argument("--class-names", nargs="*", default=[])
    p.add_argument("--out", help="output folder (default: --results)")
    args = p.parse_args(argv)
    records = records_from_csv(Path(args.results))
    pairs = [tuple(c.split(":")) for c in args.contrasts]
    scores = {"mean foreground dice": score_of("dice")}
    for k in args.classes:
        scores[f"{args.class_names[k] if k < len(args.class_names) else f'class {k}'} dice"] = score_of("dice", k)
    budgets = sorted({r["budget"] for r in records})
    rows = contrast_table(records, pairs, budgets, scores, family=lambda r: r["score"] == "mean foreground dice")
    write_contrasts(rows, Path(args.out or args.results), f"{args.results}: paired differences in fine-tuned Dice",
                    "Paired differences A − B over seeds (hybengine/experiment/stats.py): mean over the seed grid, "
                    "95 % bootstrap interval resampling seeds, exact Wilcoxon signed-rank p over label seeds; Holm "
                    "over every mean-foreground-Dice row. Bold: interval excludes 0.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
