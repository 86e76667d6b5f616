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


def test_class_absent_from_the_whole_split_is_left_out_of_the_foreground_mean():
    """Item 7: a 2-class folder scored with num_classes=3. Class 2 is never in the truth nor predicted,
    so every image gives it Dice 1.0; it must not lift mean_fg_dice, and the summary names it."""
    from hybengine.metrics import image_metrics

    target = torch.tensor([[0, 1, 1, 0], [0, 1, 0, 0]])
    pred = torch.tensor([[0, 1, 0, 0], [0, 1, 0, 0]])  # class 1: Dice 2*2 / (2*2 + 0 + 1) = 0.8
    recs = [image_metrics(pred, target, 3, 255), image_metrics(pred, target, 3, 255)]
    assert recs[0]["dice"][2] == 1.0 and recs[0]["true_pixels"] == [5, 3, 0]  # the per-image rule stays
    s = summarize(recs, 3)
    assert s["absent_classes"] == [2]
    assert s["mean_fg_dice"] == pytest.approx(0.8)  # class 1 alone, not (0.8 + 1.0) / 2
    assert s["dice"][2] == 1.0  # still reported per class, flagged by absent_classes
    s_all_absent = summarize([image_metrics(torch.zeros_like(target), torch.zeros_like(target), 3, 255)], 3)
    assert s_all_absent["absent_classes"] == [1, 2] and s_all_absent["mean_fg_dice"] != s_all_absent["mean_fg_dice"]
