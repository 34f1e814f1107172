"""HungarianMatcher: the least-cost assignment, checked against a brute-force search over every assignment."""
import itertools
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from vitlab.tasks.detection.boxes import box_cxcywh_to_xyxy, generalized_box_iou
from vitlab.tasks.detection.matcher import HungarianMatcher

Q, C = 5, 3                     # queries, classes (+ 1 no-object column in the logits)


def random_case(seed, sizes):
    g = torch.Generator().manual_seed(seed)
    outputs = {"logits": torch.randn(len(sizes), Q, C + 1, generator=g),
               "boxes": torch.rand(len(sizes), Q, 4, generator=g) * 0.5 + 0.1}
    targets = [{"labels": torch.randint(0, C, (n,), generator=g),
                "boxes": torch.rand(n, 4, generator=g) * 0.5 + 0.1} for n in sizes]
    return outputs, targets


def reference_cost(logits, boxes, labels, target_boxes):
    """The cost written out from its definition: (Q, n), weights 1 / 5 / 2."""
    prob = logits.softmax(-1)
    cost = torch.zeros(len(logits), len(labels))
    for q in range(len(logits)):
        for j in range(len(labels)):
            l1 = (boxes[q] - target_boxes[j]).abs().sum()
            giou = generalized_box_iou(box_cxcywh_to_xyxy(boxes[q:q + 1]), box_cxcywh_to_xyxy(target_boxes[j:j + 1]))
            cost[q, j] = -prob[q, labels[j]] + 5 * l1 - 2 * giou[0, 0]
    return cost


def brute_force(cost):
    """Least total cost over every injective map target j -> query q (Q!/(Q-n)! of them)."""
    n = cost.shape[1]
    best = min(itertools.permutations(range(cost.shape[0]), n),
               key=lambda qs: sum(cost[q, j].item() for j, q in enumerate(qs)))
    return best, sum(cost[q, j].item() for j, q in enumerate(best))


@pytest.mark.parametrize("seed", range(6))
def test_matcher_equals_brute_force(seed):
    sizes = [seed % 4, 3, 0, (seed + 1) % 4]          # 0..3 targets per image, an empty image in every batch
    outputs, targets = random_case(seed, sizes)
    matches = HungarianMatcher()(outputs, targets)
    assert len(matches) == len(sizes)
    for b, ((pred, tgt), t) in enumerate(zip(matches, targets)):
        assert pred.dtype == tgt.dtype == torch.int64 and len(pred) == len(tgt) == len(t["labels"])
        cost = reference_cost(outputs["logits"][b], outputs["boxes"][b], t["labels"], t["boxes"])
        best, best_cost = brute_force(cost)
        got = dict(zip(tgt.tolist(), pred.tolist()))              # target -> query
        assert sum(cost[q, j].item() for j, q in got.items()) == pytest.approx(best_cost, abs=1e-5)
        assert got == dict(enumerate(best))                       # random costs: the optimum is unique
        assert pred.tolist() == sorted(pred.tolist())


def test_no_targets_anywhere_gives_empty_matches():
    outputs, targets = random_case(0, [0, 0])
    for pred, tgt in HungarianMatcher()(outputs, targets):
        assert pred.shape == tgt.shape == (0,) and pred.dtype == torch.int64


def test_non_finite_prediction_does_not_crash():
    outputs, targets = random_case(1, [2])
    outputs["boxes"][0, 0] = float("nan")
    pred, tgt = HungarianMatcher()(outputs, targets)[0]
    assert 0 not in pred.tolist() and len(pred) == 2      # the NaN query is the worst match, left out


def test_matcher_equals_hf():
    from transformers.loss.loss_for_object_detection import HungarianMatcher as HFMatcher

    outputs, targets = random_case(3, [3, 1, 0, 2])
    ours = HungarianMatcher()(outputs, targets)
    hf = HFMatcher(class_cost=1, bbox_cost=5, giou_cost=2)(
        {"logits": outputs["logits"], "pred_boxes": outputs["boxes"]},
        [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets])
    for (p, t), (hp, ht) in zip(ours, hf):
        assert torch.equal(p, hp) and torch.equal(t, ht)
