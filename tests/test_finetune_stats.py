"""Paired statistics over seeds (hybengine/experiment/stats.py) on cases with known answers."""
import itertools
import math

import numpy as np
import pytest

from hybengine.experiment.stats import (
    bootstrap_ci,
    contrast_table,
    hierarchical_ci,
    holm,
    label_seed_ci,
    paired_contrast,
    paired_grid,
    score_of,
    sign_per_pretraining_seed,
    split_init,
    versus_zero_shot,
    wilcoxon_signed_rank,
)


def _brute_force_p(d):
    """Two-sided exact signed-rank p by listing all 2^n sign patterns of the mid-ranks."""
    d = [v for v in d if v != 0]
    a = sorted(abs(v) for v in d)
    rank = {v: sum(i + 1 for i, w in enumerate(a) if w == v) / a.count(v) for v in set(a)}
    ranks = [rank[abs(v)] for v in d]
    obs = sum(r for r, v in zip(ranks, d, strict=True) if v > 0)
    centre = sum(ranks) / 2
    hits = sum(abs(sum(r for r, s in zip(ranks, signs, strict=True) if s) - centre) >= abs(obs - centre) - 1e-9
               for signs in itertools.product([0, 1], repeat=len(d)))
    return obs, hits / 2 ** len(d)


def test_wilcoxon_known_values():
    assert wilcoxon_signed_rank([1, 2, 3, 4, 5]) == (15.0, 0.0625, 5)  # all positive: 2 / 2^5
    assert wilcoxon_signed_rank([0.1] * 8)[1] == pytest.approx(2 / 256)
    assert wilcoxon_signed_rank([0, 0]) == (0.0, 1.0, 0)
    assert wilcoxon_signed_rank([1, -1])[1] == 1.0
    # a textbook case: ranks 1..n with alternating signs around zero give a symmetric W+
    for d in ([0.5, -1.2, 2.0, 2.0, -0.3, 1.1, 0.7], [3, -1, 4, -1, 5, 0, -9, 2, 6], [-0.2, -0.4, 0.1]):
        w, p, _ = wilcoxon_signed_rank(d)
        bw, bp = _brute_force_p(d)
        assert w == bw and p == pytest.approx(bp)


def test_holm_known_values():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5]) == [0.5]
    assert holm([0.6, 0.7]) == [1.0, 1.0]


def test_bootstrap_interval():
    assert bootstrap_ci(np.full((2, 5), 0.3)) == pytest.approx((0.3, 0.3))  # no spread, no width
    rng = np.random.default_rng(0)
    d = rng.normal(0.1, 0.05, (3, 40))
    lo, hi = bootstrap_ci(d, n_boot=4000)
    assert lo < d.mean() < hi and lo > 0.05 and hi < 0.15
    # the interval covers the true mean ~95 % of the time (coverage check on 200 simulated grids)
    cover = sum(lo < 0 < hi for lo, hi in (bootstrap_ci(rng.normal(0, 1, (1, 30)), n_boot=600, seed=i)
                                           for i in range(200)))
    assert 175 <= cover <= 199


def _records(effect: float, noise: float = 0.01):
    """hybrid_p{0,1} = scratch + effect (+ noise), supervised_p{0,1} = scratch, 8 label seeds, budget 2."""
    rng = np.random.default_rng(1)
    recs = []
    for s in range(8):
        base = 0.5 + 0.1 * rng.standard_normal()
        recs.append({"init": "scratch", "budget": 2, "seed": s, "mean_fg_dice": base, "dice": [1, base, base]})
        for p in (0, 1):
            h = base + effect + noise * rng.standard_normal()
            recs.append({"init": f"hybrid_p{p}", "budget": 2, "seed": s, "mean_fg_dice": h, "dice": [1, h, h]})
            recs.append({"init": f"supervised_p{p}", "budget": 2, "seed": s, "mean_fg_dice": base,
                         "dice": [1, base, base]})
    return recs


def test_paired_grid_pairs_seeds_and_broadcasts_scratch():
    assert split_init("supervised-noisy_p3") == ("supervised-noisy", 3) and split_init("scratch") == ("scratch", None)
    recs = _records(0.05, noise=0.0)
    d, ps, seeds = paired_grid(recs, "hybrid", "scratch", 2, score_of("dice"))
    assert d.shape == (2, 8) and ps == [0, 1] and seeds == list(range(8))
    assert np.allclose(d, 0.05)
    d, _, _ = paired_grid(recs[:-3], "hybrid", "supervised", 2, score_of("dice"))  # seed 7 incomplete: dropped
    assert d.shape == (2, 7)


def test_paired_contrast_finds_a_known_effect_and_no_effect():
    r = paired_contrast(_records(0.05), "hybrid", "supervised")
    assert r["mean"] == pytest.approx(0.05, abs=0.01) and r["ci_low"] > 0.03 and r["ci_high"] < 0.07
    assert r["p"] == pytest.approx(2 / 256) and r["label_seeds"] == 8 and r["pretrain_seeds"] == 2
    r0 = paired_contrast(_records(0.0), "hybrid", "supervised")
    assert r0["ci_low"] < 0 < r0["ci_high"] and r0["p"] > 0.05
    rk = paired_contrast(_records(0.05), "hybrid", "scratch", metric="dice", class_index=2)
    assert rk["mean"] == pytest.approx(0.05, abs=0.01)


def test_contrast_table_holm_over_the_declared_family():
    recs = _records(0.05)
    rows = contrast_table(recs, [("hybrid", "supervised"), ("hybrid", "scratch")], [2],
                          {"mean": score_of("dice"), "nucleus": score_of("dice", 2)},
                          family=lambda r: r["score"] == "mean", n_boot=500)
    fam = [r for r in rows if r["score"] == "mean"]
    assert all(r["p_holm"] == pytest.approx(min(1, 2 * r["p"])) for r in fam)  # both p equal: 2p
    assert all(math.isnan(r["p_holm"]) for r in rows if r["score"] != "mean")


def test_records_round_trip_through_the_committed_csv_files(tmp_path):
    """Committed results (runs.csv + per_image.csv) give back the records the contrasts need."""
    from hybengine.finetune.reports import records_from_csv, write_contrasts, write_reports

    recs = []
    for init, shift in (("hybrid", 0.1), ("scratch", 0.0)):
        for s in range(3):
            per_image = [{"name": f"im{i}", "dice": [0.9, 0.5 + shift + 0.01 * s + 0.02 * i, 0.3 + shift]}
                         for i in range(2)]
            dice = [sum(p["dice"][k] for p in per_image) / 2 for k in range(3)]
            recs.append({"init": init, "budget": 1, "seed": s, "labeled": [f"x{s}"], "per_image": per_image,
                         "dice": dice, "mean_fg_dice": (dice[1] + dice[2]) / 2})
    write_reports(recs, tmp_path, "t", class_names=["bg", "cell", "nucleus"], console=None)
    back = records_from_csv(tmp_path)
    assert len(back) == 6
    r = next(r for r in back if r["init"] == "hybrid" and r["seed"] == 2)
    assert r["dice"] == pytest.approx([0.9, 0.63, 0.4]) and r["mean_fg_dice"] == pytest.approx(0.515)
    rows = contrast_table(back, [("hybrid", "scratch")], [1], {"mean": score_of("dice")}, n_boot=200)
    assert rows[0]["mean"] == pytest.approx(0.1)
    write_contrasts(rows, tmp_path, "t")
    text = (tmp_path / "contrasts.md").read_text()
    assert "hybrid − scratch" in text and "Caution: some cells rest on 3 label seeds" in text


def test_hierarchical_interval_and_pretraining_seed_sign_on_known_cases():
    """d[p, s] = a_p (checkpoints differ, label seeds do not): with a = (0, 1) the mean of two drawn
    pretraining seeds is 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4, so the 95 % interval is [0, 1];
    the label-seed interval, conditional on the two checkpoints, is the point 0.5."""
    d = np.array([[0.0] * 6, [1.0] * 6])
    assert hierarchical_ci(d, n_boot=4000) == pytest.approx((0.0, 1.0))
    assert label_seed_ci(d, n_boot=4000) == pytest.approx((0.5, 0.5))
    assert hierarchical_ci(np.full((3, 4), 0.2)) == pytest.approx((0.2, 0.2))
    # one pretraining seed: the hierarchical interval is the label-seed bootstrap of that row
    row = np.random.default_rng(0).normal(0.1, 0.05, (1, 30))
    lo, hi = hierarchical_ci(row, n_boot=4000)
    assert lo < 0.1 < hi and hi - lo == pytest.approx(np.subtract(*bootstrap_ci(row, n_boot=4000)[::-1]), rel=0.15)
    # exact sign test: 4 of 4 seeds up -> 2/16; 2 of 3 -> 1.0; zeros dropped
    assert sign_per_pretraining_seed(np.ones((4, 3))) == (4, 4, pytest.approx(0.125))
    assert sign_per_pretraining_seed(np.array([[1.0], [2.0], [-1.0]])) == (2, 3, pytest.approx(1.0))
    assert sign_per_pretraining_seed(np.array([[0.0], [1.0]])) == (1, 1, pytest.approx(1.0))
    # in a contrast row, beside the label-seed test
    r = paired_contrast(_records(0.05), "hybrid", "supervised")
    assert r["seeds_up"] == 2 and r["seeds_nonzero"] == 2 and r["hier_low"] > 0.03 and r["label_high"] < 0.07


def test_fine_tune_against_its_own_zero_shot():
    """hybrid_p{0,1} start at 0.6 / 0.4 (budget 0) and fine-tune to 0.5 for every label seed: p0 falls by
    0.1, p1 gains 0.1; the mean is 0 and one of two pretraining seeds is up."""
    recs = [{"init": f"hybrid_p{p}", "budget": 0, "seed": s, "mean_fg_dice": z}
            for p, z in ((0, 0.6), (1, 0.4)) for s in range(4)]
    recs += [{"init": f"hybrid_p{p}", "budget": 2, "seed": s, "mean_fg_dice": 0.5} for p in (0, 1) for s in range(4)]
    r = versus_zero_shot(recs, "hybrid", 2, score_of("dice"), n_boot=2000)
    assert r["zero_shot"] == pytest.approx(0.5) and r["mean"] == pytest.approx(0.0)
    assert r["hier_low"] == pytest.approx(-0.1) and r["hier_high"] == pytest.approx(0.1)
    assert (r["seeds_up"], r["seeds_nonzero"], r["pretrain_seeds"], r["label_seeds"]) == (1, 2, 2, 4)
