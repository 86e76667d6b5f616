"""Segmentation metrics per image and class: Dice and IoU from confusion counts.

    Dice_k = 2 TP_k / (2 TP_k + FP_k + FN_k)        IoU_k = TP_k / (TP_k + FP_k + FN_k)
Empty-mask rules (per image, per class): prediction and truth both empty -> 1.0 (nothing to find,
nothing wrongly found); exactly one empty -> 0.0 (falls out of the formulas). Pixels labelled
`ignore_index` count nowhere. Aggregates are means over images; `mean_fg` averages classes 1..K-1.
"""
from __future__ import annotations

import torch


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


def summarize(per_image: list[dict], num_classes: int) -> dict:
    """Means over images of the per-class Dice/IoU lists in `per_image` records."""
    dice = torch.tensor([r["dice"] for r in per_image], dtype=torch.float64).mean(0)
    iou = torch.tensor([r["iou"] for r in per_image], dtype=torch.float64).mean(0)
    fg = slice(1, num_classes)
    return {"dice": dice.tolist(), "iou": iou.tolist(),
            "mean_fg_dice": dice[fg].mean().item(), "mean_fg_iou": iou[fg].mean().item()}
