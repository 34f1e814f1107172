"""coco_map (pycocotools' COCOeval) against a hand computation and against faster-coco-eval; evaluate_detector
on a stand-in DetectionSet with a model whose predictions are perfect."""
import copy
import random

import pytest
import torch

from vitlab.data.augment import Normalize
from vitlab.errors import VitlabError
from vitlab.tasks.detection.boxes import box_xyxy_to_cxcywh
from vitlab.tasks.detection.evaluate import METRIC_NAMES, coco_map, evaluate_detector

CATEGORIES = [{"id": 3, "name": "circle"}, {"id": 8, "name": "square"}, {"id": 21, "name": "star"}]


def one_box_gt():
    return {"images": [{"id": 1, "width": 100, "height": 100, "file_name": "a.png"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 40, 40], "area": 1600,
                             "iscrowd": 0}],
            "categories": CATEGORIES}


# One ground-truth box [10, 10, 40, 40] (x 10..50, y 10..50, area 1600: "medium", 32^2 <= 1600 < 96^2).
# A detection [10, 10, 29, 40] lies inside it: intersection 29 * 40 = 1160, union 1600, IoU = 1160/1600 = 0.725.
# It is a true positive at the IoU thresholds 0.50, 0.55, 0.60, 0.65, 0.70 (5 of the 10) and a miss at 0.75..0.95.
# At a threshold it passes, with it alone: precision 1 at recall 1, AP = 1; so AP50 = 1, AP75 = 0,
# mAP = 5/10 * 1 = 0.5.
# Add a false positive [60, 60, 30, 30] (IoU 0, area 900: "small") scored above it: ranked FP, TP, the precision
# at recall 1 is 1/2 and COCO's interpolated precision is 1/2 at every recall threshold: AP50 = 0.5,
# mAP = 5/10 * 1/2 = 0.25. Scored below it, the FP comes after full recall: AP50 = 1, mAP = 0.5 again.
# In the "medium" range the small FP is outside the range and unmatched, so COCO ignores it: AP_medium = 0.5 in all
# three cases. small and large hold no ground truth: COCO says -1 there.
TP = {"image_id": 1, "category_id": 3, "bbox": [10, 10, 29, 40], "score": 0.8}


@pytest.mark.parametrize("fp_score, ap50, ap", [(None, 1.0, 0.5), (0.9, 0.5, 0.25), (0.7, 1.0, 0.5)])
def test_coco_map_by_hand(fp_score, ap50, ap):
    results = [TP] if fp_score is None else \
        [TP, {"image_id": 1, "category_id": 3, "bbox": [60, 60, 30, 30], "score": fp_score}]
    gt, before = one_box_gt(), copy.deepcopy(results)
    m = coco_map(gt, results)
    assert m["val_map50"] == pytest.approx(ap50, abs=1e-12)
    assert m["val_map75"] == 0.0
    assert m["val_map"] == pytest.approx(ap, abs=1e-12)
    assert m["val_map_medium"] == pytest.approx(0.5, abs=1e-12)
    assert m["val_map_small"] == -1.0 and m["val_map_large"] == -1.0
    lines = m["summary"].splitlines()
    assert len(lines) == 12 and lines[0].startswith(" Average Precision  (AP) @[ IoU=0.50:0.95")
    assert gt == one_box_gt() and results == before             # the inputs are not modified


def test_empty_results_score_zero(capsys):
    m = coco_map(one_box_gt(), [])
    assert m["val_map"] == m["val_map50"] == m["val_map_medium"] == 0.0 and m["val_map_small"] == -1.0
    assert len(m["summary"].splitlines()) == 12
    assert capsys.readouterr().out == ""                          # COCOeval's printing is captured


def test_bad_input_is_refused():
    with pytest.raises(VitlabError, match="not in the ground truth"):
        coco_map(one_box_gt(), [dict(TP, image_id=5)])
    with pytest.raises(VitlabError, match="no 'categories'"):
        coco_map({"images": [], "annotations": []}, [])


def random_case(seed=0):
    """Images of different sizes, three non-contiguous categories, crowd boxes, boxes in all three area ranges;
    detections: jittered copies of most boxes (some with a wrong class), a few false positives, random scores."""
    rng = random.Random(seed)
    images, annotations, results = [], [], []
    for image_id in range(1, 9):
        width, height = rng.choice([(640, 480), (320, 320), (500, 375)])
        images.append({"id": image_id, "width": width, "height": height, "file_name": f"{image_id}.jpg"})
        for _ in range(rng.randint(0, 7)):
            side = rng.choice([rng.uniform(8, 30), rng.uniform(35, 90), rng.uniform(100, 300)])  # s / m / l
            w, h = side * rng.uniform(0.7, 1.3), side * rng.uniform(0.7, 1.3)
            x, y = rng.uniform(0, width - w), rng.uniform(0, max(height - h, 1))
            crowd = int(rng.random() < 0.1)
            cat = rng.choice(CATEGORIES)["id"]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cat,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": crowd})
            if rng.random() < 0.85:
                jitter = [v + rng.gauss(0, 0.08 * side) for v in (x, y)] + \
                         [max(1.0, v * rng.uniform(0.8, 1.2)) for v in (w, h)]
                wrong = rng.random() < 0.1
                results.append({"image_id": image_id, "score": rng.random(), "bbox": jitter,
                                "category_id": rng.choice(CATEGORIES)["id"] if wrong else cat})
        for _ in range(rng.randint(0, 3)):
            s = rng.uniform(10, 150)
            results.append({"image_id": image_id, "category_id": rng.choice(CATEGORIES)["id"],
                            "bbox": [rng.uniform(0, width - s), rng.uniform(0, height - s), s, s],
                            "score": rng.random()})
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}, results


def faster_coco_eval_stats(gt, results):
    from faster_coco_eval import COCO, COCOeval_faster

    coco_gt = COCO(copy.deepcopy(gt))
    coco_dt = coco_gt.loadRes(copy.deepcopy(results))
    evaluator = COCOeval_faster(coco_gt, coco_dt, iouType="bbox", print_function=lambda *a: None)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return [float(v) for v in evaluator.stats[:6]]


def test_coco_map_equals_faster_coco_eval():
    gt, results = random_case()
    areas = [a["area"] for a in gt["annotations"]]
    assert min(areas) < 32 ** 2 and max(areas) > 96 ** 2 and any(32 ** 2 < a < 96 ** 2 for a in areas)
    assert any(a["iscrowd"] for a in gt["annotations"]) and len(results) > 20
    ours = coco_map(gt, results)
    theirs = faster_coco_eval_stats(gt, results)
    for name, value in zip(METRIC_NAMES, theirs):
        assert ours[name] == pytest.approx(value, abs=1e-9), name
    assert 0.1 < ours["val_map"] < 0.9                      # a case that is neither trivial nor hopeless


class StandInSet:
    """The DetectionSet attributes evaluate_detector reads. Image i is filled with the value i, so the fake model
    below knows which image it sees."""

    def __init__(self):
        self.classes, self.category_ids = ["circle", "square", "star"], [3, 8, 21]
        self.orig_sizes = [(120, 200), (64, 64), (300, 150), (90, 90), (50, 80)]
        self.image_ids = [101, 102, 103, 104, 105]
        self.images = torch.arange(5, dtype=torch.uint8).view(5, 1, 1, 1).expand(5, 3, 16, 16).clone()
        # pixel areas: image 3's box 270 x 135 is large, image 4's 9 x 13.5 small, most others medium; image 5 empty
        xyxy = [[[0.1, 0.1, 0.5, 0.6], [0.5, 0.2, 0.9, 0.9]], [[0.2, 0.2, 0.8, 0.7]], [[0.05, 0.05, 0.95, 0.95]],
                [[0.0, 0.0, 1.0, 1.0], [0.3, 0.3, 0.4, 0.45], [0.6, 0.1, 0.7, 0.3]], []]
        labels = [[0, 2], [1], [0], [2, 0, 1], []]
        self.targets = [{"boxes": box_xyxy_to_cxcywh(torch.tensor(b).view(-1, 4)), "labels": torch.tensor(lab,
                         dtype=torch.int64), "iscrowd": torch.zeros(len(lab), dtype=torch.bool)}
                        for b, lab in zip(xyxy, labels)]

    def __len__(self):
        return len(self.images)

    def coco_ground_truth(self):
        images, annotations = [], []
        for image_id, (h, w), t in zip(self.image_ids, self.orig_sizes, self.targets):
            images.append({"id": image_id, "height": h, "width": w, "file_name": f"{image_id}.png"})
            for (cx, cy, bw, bh), label in zip(t["boxes"].tolist(), t["labels"].tolist()):
                box = [(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h]
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "bbox": box,
                                    "area": box[2] * box[3], "iscrowd": 0,
                                    "category_id": self.category_ids[label]})
        return {"images": images, "annotations": annotations,
                "categories": [{"id": i, "name": n} for i, n in zip(self.category_ids, self.classes)]}


class PerfectDetector(torch.nn.Module):
    """Returns each image's targets as confident predictions; the other queries say no object."""

    def __init__(self, targets, queries=6, num_classes=3):
        super().__init__()
        self.targets, self.queries, self.num_classes = targets, queries, num_classes
        self.weight = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        assert not self.training and not torch.is_grad_enabled()
        index = (x[:, 0, 0, 0] * 255).round().long().tolist()          # Normalize(0, 1): pixel = image index
        logits = torch.full((len(index), self.queries, self.num_classes + 1), -10.0)
        logits[..., -1] = 10.0
        boxes = torch.full((len(index), self.queries, 4), 0.5)
        for b, i in enumerate(index):
            n = len(self.targets[i]["labels"])
            logits[b, torch.arange(n), self.targets[i]["labels"]] = 10.0
            logits[b, :n, -1] = -10.0
            boxes[b, :n] = self.targets[i]["boxes"]
        return {"logits": logits + self.weight, "boxes": boxes, "aux": []}


def test_evaluate_detector_perfect_predictions_score_one():
    data = StandInSet()
    model = PerfectDetector(data.targets).train()
    m = evaluate_detector(model, data, Normalize((0.0,) * 3, (1.0,) * 3), torch.device("cpu"), batch_size=2)
    assert model.training                                              # left in the mode it came in
    for name in METRIC_NAMES:
        assert m[name] == pytest.approx(1.0, abs=1e-12), name
    assert len(m["detections"]) == 5 and len(m["summary"].splitlines()) == 12
    # image 1 (120 x 200 px): the best detection is the GT box xyxy (0.1, 0.1, 0.5, 0.6) in pixels
    first = m["detections"][0]
    torch.testing.assert_close(first["boxes"][0], torch.tensor([20.0, 12.0, 100.0, 72.0]))
    assert first["labels"][:2].tolist() == [0, 2]
