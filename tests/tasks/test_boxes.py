"""Box conversions, IoU and generalized IoU against hand computations."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from vitlab.tasks.detection.boxes import (box_area, box_cxcywh_to_xyxy, box_iou, box_xyxy_to_cxcywh,
                                          generalized_box_iou)



def test_conversions_round_trip_and_hand_values():
    cxcywh = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.1, 0.9, 0.2, 0.2]])
    xyxy = box_cxcywh_to_xyxy(cxcywh)
    # (0.5 -/+ 0.1, 0.5 -/+ 0.2) and (0.1 -/+ 0.1, 0.9 -/+ 0.1)
    torch.testing.assert_close(xyxy, torch.tensor([[0.4, 0.3, 0.6, 0.7], [0.0, 0.8, 0.2, 1.0]]))
    torch.testing.assert_close(box_xyxy_to_cxcywh(xyxy), cxcywh)
    torch.testing.assert_close(box_area(xyxy), torch.tensor([0.08, 0.04]))
    batched = torch.rand(2, 5, 4)                          # any leading dimensions
    torch.testing.assert_close(box_xyxy_to_cxcywh(box_cxcywh_to_xyxy(batched)), batched)


# Worked on paper (A = boxes1 row, B = boxes2 column; area = w * h):
#  overlap  A=[0,0,2,2] B=[1,1,3,3]: |A|=|B|=4, inter [1,1,2,2] = 1, union = 4+4-1 = 7, IoU = 1/7;
#           enclosing C=[0,0,3,3] = 9; GIoU = 1/7 - (9-7)/9 = 9/63 - 14/63 = -5/63
#  disjoint A=[0,0,1,1] B=[2,0,3,1]: inter 0, union 2, C=[0,0,3,1] = 3; GIoU = 0 - (3-2)/3 = -1/3
#  corners  A=[0,0,1,1] B=[1,1,2,2]: inter 0, union 2, C=[0,0,2,2] = 4; GIoU = -(4-2)/4 = -1/2
#  nested   A=[0,0,4,4] B=[1,1,2,3]: |A|=16, |B|=1*2=2, inter 2, union 16, IoU = 2/16 = 1/8; C = A = 16,
#           GIoU = 1/8 - 0 = 1/8 (nested boxes: GIoU = IoU)
#  equal    A=B=[1,1,3,3]: IoU = 1, C = A, GIoU = 1
CASES = [
    ([0, 0, 2, 2], [1, 1, 3, 3], 1 / 7, 7, -5 / 63),
    ([0, 0, 1, 1], [2, 0, 3, 1], 0.0, 2, -1 / 3),
    ([0, 0, 1, 1], [1, 1, 2, 2], 0.0, 2, -1 / 2),
    ([0, 0, 4, 4], [1, 1, 2, 3], 1 / 8, 16, 1 / 8),
    ([1, 1, 3, 3], [1, 1, 3, 3], 1.0, 4, 1.0),
]


@pytest.mark.parametrize("a, b, iou, union, giou", CASES)
def test_iou_and_giou_equal_hand_computation(a, b, iou, union, giou):
    a, b = torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64)
    got_iou, got_union = box_iou(a, b)
    assert got_iou.item() == pytest.approx(iou, abs=1e-12)
    assert got_union.item() == pytest.approx(union, abs=1e-12)
    assert generalized_box_iou(a, b).item() == pytest.approx(giou, abs=1e-12)
    assert generalized_box_iou(b, a).item() == pytest.approx(giou, abs=1e-12)   # symmetric


def test_giou_is_pairwise_and_matches_the_cases():
    a = torch.tensor([c[0] for c in CASES], dtype=torch.float64)                 # (5, 4)
    b = torch.tensor([c[1] for c in CASES], dtype=torch.float64)                 # (5, 4)
    full = generalized_box_iou(a, b[:3])
    assert full.shape == (5, 3)
    torch.testing.assert_close(torch.diag(generalized_box_iou(a, b)),
                               torch.tensor([c[4] for c in CASES], dtype=torch.float64))
    # disjoint boxes keep a signal where IoU is flat: moving B further away lowers GIoU
    far = torch.tensor([[5.0, 0.0, 6.0, 1.0]])
    assert generalized_box_iou(torch.tensor([[0.0, 0, 1, 1]]), far).item() < -1 / 3


def test_half_precision_is_computed_in_float32():
    a = torch.tensor([[0.0, 0, 2, 2]], dtype=torch.bfloat16)
    b = torch.tensor([[1.0, 1, 3, 3]], dtype=torch.bfloat16)
    out = generalized_box_iou(a, b)
    assert out.dtype == torch.float32 and out.item() == pytest.approx(-5 / 63, abs=1e-6)


def test_giou_equals_hf_on_random_boxes():
    from transformers.loss.loss_for_object_detection import generalized_box_iou as hf_giou

    g = torch.Generator().manual_seed(0)
    a = box_cxcywh_to_xyxy(torch.rand(7, 4, generator=g))
    b = box_cxcywh_to_xyxy(torch.rand(4, 4, generator=g))
    torch.testing.assert_close(generalized_box_iou(a, b), hf_giou(a, b), rtol=0, atol=1e-6)
