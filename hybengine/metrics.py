"""Segmentation metrics per image and class: Dice and IoU from confusion counts, HD95 and ASSD from
boundary distances (in pixels).

    Dice_k = 2 TP_k / (2 TP_k + FP_k + FN_k)        IoU_k = TP_k / (TP_k + FP_k + FN_k)

Boundary distances (the MedPy conventions; exact Euclidean, see `nearest_distances`). For class k,
P = predicted pixels of k, T = true pixels of k. The boundary of a set is its pixels with at least
one 4-neighbour outside the set or outside the image. d(P->T) lists, for every boundary pixel of P,
the Euclidean distance to the nearest boundary pixel of T (and d(T->P) the other way round). Then
    HD95_k = 95th percentile (linear interpolation) of d(P->T) and d(T->P) pooled
    ASSD_k = (mean d(P->T) + mean d(T->P)) / 2

Empty-mask rules (per image, per class), all written down here and tested by hand:
- both empty: Dice = IoU = 1.0 and HD95 = ASSD = 0.0 (nothing to find, nothing wrongly found);
- exactly one empty: Dice = IoU = 0.0 (falls out of the formulas) and HD95 = ASSD = the image
  diagonal sqrt(H^2 + W^2), the largest distance the image allows, so that means stay finite and a
  missed or hallucinated structure scores worst, never better than a poor outline.
Pixels labelled `ignore_index` count nowhere: they are removed from the prediction as well as
the truth. Aggregates are means over images; `mean_fg` averages the foreground classes 1..K-1.

Absent-class rule (the summary): a class with no ground-truth pixel in the whole evaluated split would
score a perfect Dice 1.0 on every image where the model also never predicts it, a score earned by
nothing. Such a class keeps its per-class means, but is left out of `mean_fg_*` and named in
`absent_classes` (e.g. a 2-class folder fine-tuned with num_classes=3). If every foreground class is
absent, `mean_fg_*` is NaN.
"""
from __future__ import annotations

import math

import torch

HD_PERCENTILE = 95.0


def confusion_counts(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """pred, target: (H, W) integer maps. Returns (TP, FP, FN), each (K,) int64."""
    valid = target != ignore_index
    p, t = pred[valid].long(), target[valid].long()
    K = num_classes
    cm = torch.bincount(t * K + p, minlength=K * K).view(K, K)  # rows: truth, cols: prediction
    tp = cm.diag()
    return tp, cm.sum(0) - tp, cm.sum(1) - tp


def dice_iou(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class (Dice, IoU) as float64 with the empty-mask rule above."""
    tp, fp, fn = tp.double(), fp.double(), fn.double()
    both_empty = (tp + fp + fn) == 0
    dice = torch.where(both_empty, 1.0, 2 * tp / (2 * tp + fp + fn).clamp(min=1))
    iou = torch.where(both_empty, 1.0, tp / (tp + fp + fn).clamp(min=1))
    return dice, iou


def boundary(mask: torch.Tensor) -> torch.Tensor:
    """(H, W) bool -> (H, W) bool: pixels of `mask` with a 4-neighbour outside it or off the image."""
    m = torch.nn.functional.pad(mask[None, None].float(), (1, 1, 1, 1))[0, 0].bool()
    inner = m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]  # up, down, left, right all inside
    return mask & ~inner


def nearest_distances(seeds: torch.Tensor, queries: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """seeds, queries: (H, W) bool -> (Q,) float64: exact Euclidean distance from each query pixel (row-major
    order, as `tensor[queries]`) to the nearest seed pixel; there must be a seed.

    Separable, as a distance transform (Felzenszwalb & Huttenlocher 2012, with brute-force 1-D minima):
        D(i, j)^2 = min_i' [(i - i')^2 + g(i', j)],   g(i', j) = min over seeds (i', j') of row i' of (j - j')^2
    Sparse boundaries (the usual case) take g from the seed list and D only at the queries, about
    (seeds + queries) x (H + W) work; dense ones (noisy predictions) take both passes over the whole
    grid, H x W x (H + W), which is then cheaper."""
    H, W = seeds.shape
    big = float(4 * (H + W) ** 2)  # larger than any real squared distance
    # every value is an integer below `big`: float32 holds them exactly up to 2^24, float64 beyond
    dtype = torch.float32 if 2 * big < 2**24 else torch.float64
    cols, rows = torch.arange(W, dtype=dtype), torch.arange(H, dtype=dtype)
    qi, qj = queries.nonzero(as_tuple=True)
    if int(seeds.sum()) + len(qi) > H * W // 8:  # dense: the first pass over every row of the grid
        f = torch.where(seeds, 0.0, big).to(dtype)
        d2col = (cols[:, None] - cols[None, :]).square()
        step = max(1, (1 << 24) // (W * W))
        g = torch.cat([(f[i:i + step, None, :] + d2col).amin(dim=-1) for i in range(0, H, step)])
    else:  # sparse: scatter each seed's row-wise squared distances into its row
        si, sj = seeds.nonzero(as_tuple=True)
        g = torch.full((H, W), big, dtype=dtype)
        for k in range(0, len(si), chunk):
            src = (cols[None, :] - sj[k:k + chunk, None]).square()
            g.scatter_reduce_(0, si[k:k + chunk, None].expand(-1, W), src, reduce="amin")
    d2 = [((qi[k:k + chunk, None] - rows[None, :]).square() + g[:, qj[k:k + chunk]].T).amin(dim=1)
          for k in range(0, len(qi), chunk)]
    return torch.cat(d2).double().sqrt() if d2 else torch.zeros(0, dtype=torch.float64)


def surface_distances(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                      ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """pred, target: (H, W) integer maps. Returns per-class (HD95, ASSD), each (K,) float64, in pixels,
    with the empty-mask rules of the module docstring."""
    valid = target != ignore_index
    H, W = target.shape
    diagonal = math.hypot(H, W)
    hd95 = torch.zeros(num_classes, dtype=torch.float64)
    assd = torch.zeros(num_classes, dtype=torch.float64)
    for k in range(num_classes):
        p, t = (pred == k) & valid, target == k
        p_any, t_any = bool(p.any()), bool(t.any())
        if not p_any and not t_any:
            continue  # both empty: 0.0
        if p_any != t_any:
            hd95[k] = assd[k] = diagonal  # exactly one empty: the worst distance the image allows
            continue
        bp, bt = boundary(p), boundary(t)
        d_pt = nearest_distances(bt, bp)  # each boundary pixel of P to the nearest of T
        d_tp = nearest_distances(bp, bt)
        hd95[k] = torch.quantile(torch.cat([d_pt, d_tp]), HD_PERCENTILE / 100)  # linear, as numpy
        assd[k] = (d_pt.mean() + d_tp.mean()) / 2
    return hd95, assd


def image_metrics(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int) -> dict:
    """All per-class metrics of one (H, W) prediction: {'dice', 'iou', 'hd95', 'assd'} -> lists of K floats."""
    dice, iou = dice_iou(*confusion_counts(pred, target, num_classes, ignore_index))
    hd95, assd = surface_distances(pred, target, num_classes, ignore_index)
    truth = torch.bincount(target[target != ignore_index].long().flatten(), minlength=num_classes)[:num_classes]
    return {"dice": dice.tolist(), "iou": iou.tolist(), "hd95": hd95.tolist(), "assd": assd.tolist(),
            "true_pixels": truth.tolist()}


def summarize(per_image: list[dict], num_classes: int) -> dict:
    """Means over images of the per-class metric lists in `per_image` records (Dice, IoU, and HD95 /
    ASSD where the records have them), plus the foreground means `mean_fg_<metric>` over the
    foreground classes present in the split's ground truth, and `absent_classes` (the rule above;
    records without `true_pixels` count every class as present)."""
    absent: list[int] = []
    if per_image and "true_pixels" in per_image[0]:
        total = torch.tensor([r["true_pixels"] for r in per_image], dtype=torch.int64).sum(0)
        absent = [k for k in range(num_classes) if int(total[k]) == 0]
    fg = [k for k in range(1, num_classes) if k not in absent]
    out: dict = {"absent_classes": absent}
    for key in ("dice", "iou", "hd95", "assd"):
        if not per_image or key not in per_image[0]:
            continue
        mean = torch.tensor([r[key] for r in per_image], dtype=torch.float64).mean(0)
        out[key] = mean.tolist()
        out[f"mean_fg_{key}"] = mean[fg].mean().item() if fg else math.nan
    return out
