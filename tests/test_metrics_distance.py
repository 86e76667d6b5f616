"""HD95 and ASSD (hybengine/metrics.py) against cases worked out by hand, empty-mask rules included."""
import math

import pytest
import torch

from hybengine.metrics import boundary, image_metrics, nearest_distances, summarize, surface_distances


def _square(shape, rows, cols, label=1):
    m = torch.zeros(shape, dtype=torch.long)
    m[rows[0]:rows[1], cols[0]:cols[1]] = label
    return m


def test_boundary_is_the_ring_and_touches_the_image_edge():
    sq = _square((5, 5), (1, 4), (1, 4)).bool()
    ring = boundary(sq)
    assert ring.sum() == 8 and not ring[2, 2]  # 3x3 square: its centre is interior
    full = torch.ones(3, 3, dtype=torch.bool)
    assert boundary(full).sum() == 8  # off-image counts as outside: only the centre is interior


def test_shifted_square_by_hand():
    # T: rows 1-3, cols 1-3; P: the same square one column to the right. Each directed list holds
    # 8 boundary distances, four 0 (shared boundary pixels) and four 1: ASSD = (0.5 + 0.5) / 2 = 0.5;
    # pooled 16 values, 8 zeros then 8 ones: the 95th percentile (position 14.25) is 1.
    t = _square((6, 6), (1, 4), (1, 4))
    p = _square((6, 6), (1, 4), (2, 5))
    hd95, assd = surface_distances(p, t, 2, 255)
    assert hd95[1].item() == pytest.approx(1.0) and assd[1].item() == pytest.approx(0.5)


def test_percentile_interpolates_and_assd_averages_directions():
    # 1x4 image. T = {(0,0)}; P = {(0,0), (0,3)}, both single-pixel boundaries.
    # d(P->T) = [0, 3], d(T->P) = [0]; pooled sorted [0, 0, 3]: position 0.95 * 2 = 1.9 -> 0 + 0.9 * 3 = 2.7.
    # ASSD = (mean [0, 3] + mean [0]) / 2 = 0.75 (MedPy's convention, not the pooled mean 1.0).
    t = torch.tensor([[1, 0, 0, 0]])
    p = torch.tensor([[1, 0, 0, 1]])
    hd95, assd = surface_distances(p, t, 2, 255)
    assert hd95[1].item() == pytest.approx(2.7) and assd[1].item() == pytest.approx(0.75)


def test_euclidean_not_city_block():
    t = _square((8, 8), (1, 2), (1, 2))  # single pixel (1, 1)
    p = _square((8, 8), (4, 5), (5, 6))  # single pixel (4, 5): 3-4-5 triangle
    hd95, assd = surface_distances(p, t, 2, 255)
    assert hd95[1].item() == pytest.approx(5.0) and assd[1].item() == pytest.approx(5.0)


def test_empty_mask_rules():
    t = torch.zeros(3, 4, dtype=torch.long)
    p = t.clone()
    hd95, assd = surface_distances(p, t, 3, 255)
    # classes 1 and 2 empty in both: 0; class 0 is the whole image in both: 0
    assert hd95.tolist() == [0.0, 0.0, 0.0] and assd.tolist() == [0.0, 0.0, 0.0]
    p[1, 1] = 2  # class 2 predicted, absent from the truth: one empty -> the diagonal sqrt(3^2 + 4^2) = 5
    hd95, assd = surface_distances(p, t, 3, 255)
    assert hd95[2].item() == 5.0 and assd[2].item() == 5.0 and hd95[1].item() == 0.0
    m = image_metrics(torch.zeros_like(t), _square((3, 4), (0, 1), (0, 1), label=1), 3, 255)
    assert m["hd95"][1] == 5.0 and m["dice"][1] == 0.0 and m["dice"][2] == 1.0  # missed class 1: worst


def test_ignored_pixels_count_nowhere():
    t = _square((6, 6), (1, 4), (1, 4))
    t[:, 5] = 255  # ignored column
    p = _square((6, 6), (1, 4), (1, 4))
    p[:, 5] = 1  # predictions inside the ignored column are dropped
    hd95, assd = surface_distances(p, t, 2, 255)
    assert hd95[1].item() == 0.0 and assd[1].item() == 0.0
    p2 = p.clone()
    p2[0, 0] = 1  # a real stray pixel at distance sqrt(2) from (1, 1) does count
    hd95, _ = surface_distances(p2, t, 2, 255)
    assert hd95[1].item() > 0


def test_summarize_includes_distance_means():
    recs = [{"dice": [1.0, 0.5], "iou": [1.0, 0.3], "hd95": [0.0, 2.0], "assd": [0.0, 1.0]},
            {"dice": [1.0, 1.0], "iou": [1.0, 1.0], "hd95": [0.0, 4.0], "assd": [0.0, math.sqrt(2)]}]
    s = summarize(recs, 2)
    assert s["mean_fg_hd95"] == pytest.approx(3.0) and s["mean_fg_assd"] == pytest.approx((1 + math.sqrt(2)) / 2)
    assert s["mean_fg_dice"] == pytest.approx(0.75)


@pytest.mark.parametrize("density", [0.01, 0.6])  # sparse path and dense (whole-grid) path
def test_nearest_distances_match_brute_force(density):
    g = torch.Generator().manual_seed(1)
    seeds = torch.rand(37, 53, generator=g) < density
    seeds[5, 7] = True
    queries = torch.rand(37, 53, generator=g) < 0.3
    brute = torch.cdist(queries.nonzero().double(), seeds.nonzero().double()).min(dim=1).values
    torch.testing.assert_close(nearest_distances(seeds, queries), brute, rtol=0, atol=1e-12)
