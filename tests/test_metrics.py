import pytest
import torch

from hybengine.metrics import confusion_counts, dice_iou, summarize


def test_dice_iou_by_hand():
    target = torch.tensor([[0, 1, 1], [2, 2, 255]])
    pred = torch.tensor([[0, 1, 0], [2, 1, 0]])  # last pixel ignored
    tp, fp, fn = confusion_counts(pred, target, 3, 255)
    assert tp.tolist() == [1, 1, 1] and fp.tolist() == [1, 1, 0] and fn.tolist() == [0, 1, 1]
    dice, iou = dice_iou(tp, fp, fn)
    assert dice.tolist() == pytest.approx([2 / 3, 2 / 4, 2 / 3])
    assert iou.tolist() == pytest.approx([1 / 2, 1 / 3, 1 / 2])


def test_empty_mask_rules():
    target = torch.zeros(4, 4, dtype=torch.long)
    dice, iou = dice_iou(*confusion_counts(torch.zeros_like(target), target, 3, 255))
    assert dice.tolist() == [1.0, 1.0, 1.0] and iou.tolist() == [1.0, 1.0, 1.0]  # classes 1, 2: both empty
    pred = target.clone()
    pred[0, 0] = 2  # class 2 predicted but absent: one empty -> 0
    dice, _ = dice_iou(*confusion_counts(pred, target, 3, 255))
    assert dice[2].item() == 0.0 and dice[1].item() == 1.0


def test_summarize_means_over_images():
    recs = [{"dice": [1.0, 0.5, 0.0], "iou": [1.0, 0.25, 0.0]}, {"dice": [0.0, 1.0, 1.0], "iou": [0.0, 1.0, 1.0]}]
    s = summarize(recs, 3)
    assert s["dice"] == pytest.approx([0.5, 0.75, 0.5]) and s["mean_fg_dice"] == pytest.approx(0.625)
