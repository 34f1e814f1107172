"""Segmentation metrics and loss against MONAI and hand computations (empty classes and ignore_index included),
and sliding-window inference against one forward."""
import math

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric, MeanIoU, compute_hausdorff_distance

from vitlab.tasks.segmentation.loss import SegmentationLoss
from vitlab.tasks.segmentation.metrics import confusion_matrix, dice_per_image, hd95_per_image, iou_from_confusion, \
    summarize
from vitlab.tasks.segmentation.predict import predict_logits, sliding_window_logits


def _onehot(x, C):
    return F.one_hot(x.long(), C).movedim(-1, 1).float()


def test_metrics_by_hand_with_an_empty_class_and_ignored_pixels():
    # 1 image, 2x3, classes 0..3; class 3 appears nowhere; one pixel is ignored (255)
    target = torch.tensor([[[0, 1, 1], [2, 2, 255]]])
    pred = torch.tensor([[[0, 1, 2], [2, 2, 1]]])
    conf = confusion_matrix(pred, target, 4)
    iou = iou_from_confusion(conf)
    # class 0: TP 1, union 1 -> 1; class 1: TP 1 (pred at the ignored pixel is not counted), FN 1 -> 1/2;
    # class 2: TP 2, FP 1 -> 2/3; class 3: in neither -> NaN
    assert iou[:3].tolist() == pytest.approx([1.0, 0.5, 2 / 3]) and math.isnan(iou[3])
    dice = dice_per_image(pred, target, 4)
    assert dice[0, :2].tolist() == pytest.approx([2 * 1 / (1 + 2), 2 * 2 / (3 + 2)]) and math.isnan(dice[0, 2])
    m = summarize(conf, dice, ["bg", "a", "b", "c"])
    assert m["val_miou"] == pytest.approx((1 + 0.5 + 2 / 3) / 3)
    assert m["val_dice"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert m["val_pixel_acc"] == pytest.approx(4 / 5)
    assert m["val_iou_per_class"]["c"] is None


def test_dice_and_iou_equal_monai_on_random_maps_with_ignore_masked_out():
    g = torch.Generator().manual_seed(0)
    C = 5
    target = torch.randint(0, C - 1, (6, 12, 12), generator=g)      # class 4 never in the truth
    pred = torch.randint(0, C, (6, 12, 12), generator=g)
    target[:, :2] = 255
    valid = (target != 255).unsqueeze(1).float()
    p, t = _onehot(pred, C) * valid, _onehot(target.clamp(max=C - 1), C) * valid
    ref = DiceMetric(include_background=False, reduction="mean", ignore_empty=True)
    ref(p, t)
    ours = dice_per_image(pred, target, C)
    want = ref.aggregate().item()
    assert ours[~torch.isnan(ours)].mean().item() == pytest.approx(want, abs=1e-6)
    # IoU of one image equals MONAI's MeanIoU (ignore_empty=False) where ours is defined
    for i in range(len(target)):
        iou = iou_from_confusion(confusion_matrix(pred[i:i + 1], target[i:i + 1], C))
        miou = MeanIoU(include_background=True, reduction="none", ignore_empty=False)(p[i:i + 1], t[i:i + 1])[0]
        defined = ~torch.isnan(iou)
        torch.testing.assert_close(iou[defined], miou[defined].double(), atol=1e-6, rtol=0)


def test_hd95_equals_monai_and_is_nan_for_missing_classes():
    target = torch.zeros(1, 12, 12, 12, dtype=torch.long)
    target[0, 2:6, 2:6, 2:6] = 1
    pred = torch.zeros_like(target)
    pred[0, 3:8, 2:6, 2:7] = 1
    hd = hd95_per_image(pred, target, 3)
    ref = compute_hausdorff_distance(_onehot(pred, 3), _onehot(target, 3), include_background=False, percentile=95)
    assert hd[0, 0].item() == pytest.approx(ref[0, 0].item()) and hd[0, 0] > 0
    assert math.isnan(hd[0, 1])                                        # class 2 in neither

    # ignored voxels belong to no class: a far-away ignored blob (255, which clamping would make class 2) and a
    # wrong prediction inside it change nothing
    target[0, 10:12, 10:12, 10:12] = 255
    pred[0, 10:12, 10:12, 10:12] = 1
    again = hd95_per_image(pred, target, 3)
    assert again[0, 0].item() == pytest.approx(ref[0, 0].item()) and math.isnan(again[0, 1])


def test_loss_equals_monai_dice_ce_and_ignores_pixels():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 4, 8, 8, generator=g)
    target = torch.randint(0, 4, (3, 8, 8), generator=g)
    ours, parts = SegmentationLoss(ce_weight=0.7, dice_weight=1.3)(logits, target)
    ref = DiceCELoss(to_onehot_y=True, softmax=True, batch=True, lambda_ce=0.7, lambda_dice=1.3)
    assert ours.item() == pytest.approx(ref(logits, target[:, None]).item(), abs=1e-5)
    # an ignored pixel changes nothing, whatever its logits: equal to the loss on the other pixels by hand
    ignored = target.clone()
    ignored[:, 0] = 255
    loss, parts = SegmentationLoss()(logits, ignored)
    keep = ignored != 255
    ce = F.cross_entropy(logits.movedim(1, -1)[keep], ignored[keep])
    probs = logits.softmax(1).movedim(1, -1)[keep]                     # (n, C)
    onehot = F.one_hot(ignored[keep], 4).float()
    dice = (1 - (2 * (probs * onehot).sum(0) + 1e-5) / (probs.sum(0) + onehot.sum(0) + 1e-5)).mean()
    assert parts["ce"].item() == pytest.approx(ce.item(), abs=1e-6)
    assert parts["dice"].item() == pytest.approx(dice.item(), abs=1e-6)
    assert loss.item() == pytest.approx(ce.item() + dice.item(), abs=1e-6)


@pytest.mark.parametrize("dims", [2, 3])
def test_sliding_window_equals_one_forward_for_a_pointwise_model(dims):
    conv = (torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d)(2, 3, 1)
    x = torch.randn(1, 2, *([20] * dims))
    with torch.no_grad():
        full = conv(x)
    torch.testing.assert_close(sliding_window_logits(conv, x, roi=8, overlap=0.5), full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(predict_logits(conv, x, roi=8), full, atol=1e-5, rtol=1e-5)
    # a smaller input is resized to the window, predicted once and resized back to its own size
    assert predict_logits(conv, x[..., :6], roi=8).shape[-1] == 6
