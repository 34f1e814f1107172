"""postprocess and to_coco_results on a hand-made output; draw_detections on a 64 px image."""
import pytest
import torch

from vitlab.errors import VitlabError
from vitlab.tasks.detection.draw import PALETTE, draw_detections
from vitlab.tasks.detection.postprocess import postprocess, to_coco_results

# Two images, three queries, two classes + no-object. logits = log(p), so the softmax gives back p exactly.
PROBS = torch.tensor([[[0.1, 0.3, 0.6],       # query 0: best class 1, score 0.3
                       [0.7, 0.2, 0.1],       # query 1: class 0, score 0.7
                       [0.04, 0.06, 0.9]],    # query 2: mostly no-object: class 1, score 0.06
                      [[0.2, 0.5, 0.3],       # image 2, query 0: class 1, 0.5
                       [0.01, 0.02, 0.97],    # class 1, 0.02
                       [0.6, 0.1, 0.3]]])     # class 0, 0.6
BOXES = torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.25, 0.5, 0.5, 1.0], [0.1, 0.1, 0.2, 0.2]],
                      [[0.5, 0.5, 1.0, 1.0], [0.5, 0.5, 0.1, 0.1], [0.75, 0.25, 0.5, 0.5]]])
OUTPUTS = {"logits": PROBS.log(), "boxes": BOXES}
SIZES = [(100, 200), (50, 40)]               # (height, width) of each source image


def test_postprocess_by_hand():
    first, second = postprocess(OUTPUTS, SIZES)
    # image 1, width 200, height 100: cxcywh -> xyxy, then x * 200, y * 100
    #   query 1: (0.25, 0.5, 0.5, 1.0) -> (0, 0, 0.5, 1) -> (0, 0, 100, 100)
    #   query 0: (0.5, 0.5, 0.2, 0.4) -> (0.4, 0.3, 0.6, 0.7) -> (80, 30, 120, 70)
    #   query 2: (0.1, 0.1, 0.2, 0.2) -> (0, 0, 0.2, 0.2) -> (0, 0, 40, 20)
    torch.testing.assert_close(first["scores"], torch.tensor([0.7, 0.3, 0.06]))
    assert first["labels"].tolist() == [0, 1, 1] and first["labels"].dtype == torch.int64
    torch.testing.assert_close(first["boxes"], torch.tensor([[0.0, 0, 100, 100], [80, 30, 120, 70], [0, 0, 40, 20]]))
    # image 2, width 40, height 50: query 2 (0.75, 0.25, 0.5, 0.5) -> (0.5, 0, 1, 0.5) -> (20, 0, 40, 25)
    torch.testing.assert_close(second["scores"], torch.tensor([0.6, 0.5, 0.02]))
    assert second["labels"].tolist() == [0, 1, 1]
    torch.testing.assert_close(second["boxes"][0], torch.tensor([20.0, 0, 40, 25]))
    torch.testing.assert_close(second["boxes"][1], torch.tensor([0.0, 0, 40, 50]))


def test_threshold_and_top_k():
    first, second = postprocess(OUTPUTS, torch.tensor(SIZES), threshold=0.1)
    assert first["labels"].tolist() == [0, 1] and second["labels"].tolist() == [0, 1]
    first, second = postprocess(OUTPUTS, SIZES, top_k=1)
    torch.testing.assert_close(first["scores"], torch.tensor([0.7]))
    torch.testing.assert_close(second["scores"], torch.tensor([0.6]))
    empty, _ = postprocess(OUTPUTS, SIZES, threshold=0.95)
    assert empty["boxes"].shape == (0, 4) and empty["scores"].shape == (0,)


def test_to_coco_results():
    rows = to_coco_results(postprocess(OUTPUTS, SIZES, threshold=0.1), image_ids=[11, 42], category_ids=[3, 7])
    assert len(rows) == 4
    # xyxy (80, 30, 120, 70) -> xywh (80, 30, 40, 40); class 1 -> category 7
    assert rows[1] == {"image_id": 11, "category_id": 7, "bbox": pytest.approx([80.0, 30.0, 40.0, 40.0]),
                       "score": pytest.approx(0.3)}
    assert rows[0]["category_id"] == 3 and rows[0]["bbox"] == pytest.approx([0.0, 0.0, 100.0, 100.0])
    assert [r["image_id"] for r in rows] == [11, 11, 42, 42]
    assert all(type(v) in (int, float) for r in rows for v in (r["image_id"], r["category_id"], r["score"]))


def test_bad_sizes_and_ids_are_refused():
    with pytest.raises(VitlabError, match="orig_sizes must give"):
        postprocess(OUTPUTS, [(100, 200)])
    with pytest.raises(VitlabError, match="2 images of detections but 1 image ids"):
        to_coco_results(postprocess(OUTPUTS, SIZES), [1], [3, 7])


CLASSES = ["circle", "square", "star"]


def test_draw_detections_upscales_small_images_and_outlines_in_class_colours():
    image = torch.full((3, 64, 64), 40, dtype=torch.uint8)                 # a grey not in the palette
    boxes = torch.tensor([[8.0, 8, 40, 40], [30, 20, 60, 50]])
    picture = draw_detections(image, boxes, torch.tensor([0, 1]), torch.tensor([0.9, 0.42]), CLASSES)
    assert picture.size == (256, 256) and picture.mode == "RGB"            # 64 px upscaled x4 for the labels
    # box 0 outlined at x = 8 * 4 = 32 (left edge, halfway down: y = 24 * 4 = 96) in class 0's colour;
    # box 1's bottom edge at y = 50 * 4 = 200 (x = 45 * 4 = 180) and right edge at x = 60 * 4 = 240 in class 1's
    assert picture.getpixel((32, 96)) == PALETTE[0] and picture.getpixel((33, 96)) == PALETTE[0]
    assert picture.getpixel((180, 200)) == PALETTE[1] and picture.getpixel((240, 140)) == PALETTE[1]
    assert picture.getpixel((100, 100)) == (40, 40, 40)                    # inside a box: untouched
    assert picture.getpixel((33, 30)) == PALETTE[0]                        # the label strip above box 0
    assert PALETTE[0] != PALETTE[1]


def test_draw_detections_one_colour_for_ground_truth_and_large_images_kept():
    image = torch.zeros((3, 300, 400), dtype=torch.uint8)
    picture = draw_detections(image, torch.tensor([[10.0, 50, 200, 250]]), [2], None, CLASSES, color=(0, 255, 0))
    assert picture.size == (400, 300)                                      # (W, H), not upscaled
    assert picture.getpixel((10, 150)) == (0, 255, 0) and picture.getpixel((105, 250)) == (0, 255, 0)
    with pytest.raises(VitlabError, match="uint8 \\(3, H, W\\) image"):
        draw_detections(torch.zeros(64, 64), torch.zeros(0, 4), [], None, CLASSES)
