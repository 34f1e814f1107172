import math
import time

import numpy as np
import pytest
import torch

from vitlab.data import SHAPE_CLASSES, build_detection_data
from vitlab.data.scenes import (CATEGORY_IDS, PALETTE, SIZE_CLASSES, ObjectSpec, build_scenes, caption, mask_box,
                                relation, render_objects)
from vitlab.errors import VitlabError


@pytest.fixture(scope="module")
def scenes():
    return build_scenes(48, seed=5, n_train=120, n_val=30)


def test_same_seed_same_bytes_other_seed_differs(scenes):
    train, val = scenes
    again, again_val = build_scenes(48, seed=5, n_train=120, n_val=30)
    other, _ = build_scenes(48, seed=6, n_train=120, n_val=30)
    assert train.images.numpy().tobytes() == again.images.numpy().tobytes()
    assert torch.equal(train.semantic_masks, again.semantic_masks) and torch.equal(val.images, again_val.images)
    assert train.captions == again.captions and train.objects == again.objects
    assert all(torch.equal(a, b) for a, b in zip(train.boxes, again.boxes))
    assert not torch.equal(train.images, other.images) and train.captions != other.captions
    assert not torch.equal(train.images[:30], val.images)  # val is drawn from another stream


def test_layout_counts_and_sizes(scenes):
    train, val = scenes
    assert train.images.shape == (120, 3, 48, 48) and train.images.dtype == torch.uint8
    assert val.images.shape == (30, 3, 48, 48) and train.semantic_masks.shape == (120, 48, 48)
    counts = [len(o) for o in train.objects]
    assert min(counts) >= 1 and max(counts) <= 3 and len(set(counts)) == 3  # 1, 2 and 3 objects all occur
    objects = [o for objs in train.objects for o in objs]
    assert {o.shape for o in objects} == set(SHAPE_CLASSES)
    assert {o.colour for o in objects} <= set(PALETTE) and len({o.colour for o in objects}) >= 6
    for o in objects:
        lo, hi = SIZE_CLASSES[o.size]
        assert lo * 48 <= o.radius <= hi * 48
        assert o.radius <= o.cx <= 48 - o.radius and o.radius <= o.cy <= 48 - o.radius  # fully inside


def test_objects_overlap_little(scenes):
    for objects in scenes[0].objects:
        for i, a in enumerate(objects):
            for b in objects[i + 1:]:
                assert math.hypot(a.cx - b.cx, a.cy - b.cy) >= 0.85 * (a.radius + b.radius)


def test_boxes_are_tight_boxes_of_the_instance_masks(scenes):
    train = scenes[0]
    for boxes, masks in zip(train.boxes, train.instance_masks):
        assert masks.dtype == torch.bool and len(boxes) == len(masks)
        for (x0, y0, x1, y1), mask in zip(boxes.int().tolist(), masks):
            assert mask.any() and x1 > x0 and y1 > y0
            outside = mask.clone()
            outside[y0:y1, x0:x1] = False
            assert not outside.any()  # the box encloses the mask ...
            assert mask[y0].any() and mask[y1 - 1].any() and mask[:, x0].any() and mask[:, x1 - 1].any()  # ... tightly


def test_semantic_mask_agrees_with_instance_masks(scenes):
    train = scenes[0]
    for i, masks in enumerate(train.instance_masks):
        assert int(masks.sum(0).max()) <= 1  # visible instance masks are disjoint
        expected = torch.zeros(48, 48, dtype=torch.uint8)
        for label, mask in zip(train.labels(i).tolist(), masks):
            expected[mask] = label + 1
        assert torch.equal(train.semantic_masks[i], expected)


def test_object_pixels_have_their_named_colour(scenes):
    train = scenes[0]
    for i in range(40):
        image = train.images[i].float()  # (3, S, S)
        for obj, mask in zip(train.objects[i], train.instance_masks[i]):
            mean = image[:, mask].median(dim=1).values  # edge pixels blend with the background
            palette = torch.tensor(PALETTE[obj.colour], dtype=torch.float32)
            nearest = min(PALETTE, key=lambda c: float((torch.tensor(PALETTE[c], dtype=torch.float32) - mean).norm()))
            assert nearest == obj.colour and float((mean - palette).norm()) < 45


def test_captions_name_every_object(scenes):
    train = scenes[0]
    for objects, text in zip(train.objects, train.captions):
        for o in objects:
            assert f"{o.size} {o.colour} {o.shape}" in text
        if len(objects) == 1:
            o = objects[0]
            assert text == f"a {o.size} {o.colour} {o.shape}"


def test_caption_grammar_and_relations():
    assert relation((10, 5), (12, 30)) == "above" and relation((10, 30), (12, 5)) == "below"
    assert relation((5, 10), (30, 12)) == "to the left of" and relation((30, 10), (5, 12)) == "to the right of"
    red = ObjectSpec("circle", "red", "large", 20, 10, 8, 0.0, (215, 40, 40))
    blue = ObjectSpec("star", "blue", "small", 22, 40, 4, 0.0, (50, 90, 230))
    green = ObjectSpec("ring", "green", "small", 5, 40, 4, 0.0, (45, 175, 65))
    boxes = torch.tensor([[12, 2, 28, 18], [18, 36, 26, 44], [1, 36, 9, 44]], dtype=torch.float32)
    assert caption([red], boxes[:1]) == "a large red circle"
    assert caption([red, blue], boxes[:2]) == "a large red circle above a small blue star"
    assert caption([red, blue, green], boxes) == ("a large red circle above a small blue star, and a small green "
                                                  "ring to the left of the blue star")


def test_render_objects_reusable_for_moving_objects():
    """A video variant moves specs and re-renders: an integer shift moves the mask by exactly that many pixels."""
    spec = ObjectSpec("star", "red", "large", 20.3, 18.7, 9.0, 0.4, (215.0, 40.0, 40.0))
    background = np.zeros((64, 64, 3), np.float32)
    image, visible = render_objects(background, [spec])
    moved_image, moved_visible = render_objects(background, [spec.moved(8, 5)])
    assert visible.shape == (1, 64, 64) and visible.any()
    assert np.array_equal(moved_visible[0, 5:, 8:], visible[0, :-5, :-8])
    assert np.allclose(moved_image[5:, 8:], image[:-5, :-8], atol=1e-4)
    x0, y0, x1, y1 = mask_box(visible[0])
    assert x0 < 20.3 < x1 and y0 < 18.7 < y1 and x1 - x0 <= 19 and y1 - y0 <= 19


def test_later_object_occludes_earlier():
    big = ObjectSpec("square", "red", "large", 20, 20, 12, 0.0, (215.0, 40.0, 40.0))
    small = ObjectSpec("circle", "blue", "small", 20, 20, 4, 0.0, (50.0, 90.0, 230.0))
    _, visible = render_objects(np.zeros((40, 40, 3), np.float32), [big, small])
    assert not (visible[0] & visible[1]).any() and visible[1].any()
    assert not visible[0][20, 20] and visible[1][20, 20]


@pytest.mark.parametrize("size", [16, 40, 96])
def test_any_image_size(size):
    train, _ = build_scenes(size, seed=1, n_train=12, n_val=2, max_objects=2)
    assert train.images.shape == (12, 3, size, size)
    assert all(1 <= len(o) <= 2 for o in train.objects)
    assert all(len(b) == len(o) and (b[:, 2:] <= size).all() for b, o in zip(train.boxes, train.objects))


def test_detection_bundle_from_scenes():
    bundle = build_detection_data("scenes", 32, seed=2, scenes_train=10, scenes_val=4)
    train, _ = build_scenes(32, seed=2, n_train=10, n_val=4)
    assert bundle.name == "scenes" and bundle.classes == SHAPE_CLASSES and len(bundle.val) == 4
    assert bundle.train.category_ids == CATEGORY_IDS == [1, 2, 3, 4, 5, 6]
    assert torch.equal(bundle.train.images, train.images) and bundle.train.orig_sizes == [(32, 32)] * 10
    assert bundle.train.image_ids == list(range(1, 11)) and bundle.stats == dict.fromkeys(bundle.stats, 0)
    for i, target in enumerate(bundle.train.targets):
        x0, y0, x1, y1 = train.boxes[i].unbind(-1)
        expected = torch.stack([(x0 + x1) / 64, (y0 + y1) / 64, (x1 - x0) / 32, (y1 - y0) / 32], -1)
        torch.testing.assert_close(target["boxes"], expected)
        assert torch.equal(target["labels"], train.labels(i)) and not target["iscrowd"].any()
        assert torch.equal(bundle.train.masks[i], train.instance_masks[i])
    gt = bundle.train.coco_ground_truth()
    first = gt["annotations"][0]
    assert first["bbox"] == [float(v) for v in (train.boxes[0][0, 0], train.boxes[0][0, 1],
                                                 train.boxes[0][0, 2] - train.boxes[0][0, 0],
                                                 train.boxes[0][0, 3] - train.boxes[0][0, 1])]
    assert first["area"] == float(train.instance_masks[0][0].sum()) and first["iscrowd"] == 0
    assert gt["categories"] == [{"id": i + 1, "name": n} for i, n in enumerate(SHAPE_CLASSES)]


@pytest.mark.parametrize("kwargs, match", [({"image_size": 8}, "image size must be an integer of at least 16"),
                                           ({"n_train": 0}, "train count"), ({"max_objects": 0}, "max objects")])
def test_bad_arguments(kwargs, match):
    args = {"image_size": 32, "n_train": 4, "n_val": 2} | kwargs
    with pytest.raises(VitlabError, match=match):
        build_scenes(args.pop("image_size"), **args)


def test_default_size_is_fast():
    start = time.perf_counter()
    train, val = build_scenes(64, seed=0, n_train=2000, n_val=1)
    assert len(train) == 2000
    assert time.perf_counter() - start < 12.0  # ~2 s on one core; generous for a shared machine


def test_plain_background_is_one_grey_level_plus_grain():
    """background="plain": outside the object every pixel is one grey level per image (all channels equal) plus
    the fine grain (std 6), where a textured background varies far more from image to image region."""
    plain, _ = build_scenes(48, seed=3, n_train=40, n_val=4, max_objects=1, background="plain")
    textured, _ = build_scenes(48, seed=3, n_train=40, n_val=4, max_objects=1)
    def background_spread(scenes):
        spreads = []
        for image, semantic in zip(scenes.images.float(), scenes.semantic_masks):
            near = torch.nn.functional.max_pool2d((semantic > 0).float()[None], 5, 1, 2)[0] > 0  # 2 px margin
            bg = image[:, ~near]                                # (3, background pixels off the antialiased edge)
            spreads.append(float(bg.std()))
        return np.array(spreads)
    plain_spread, textured_spread = background_spread(plain), background_spread(textured)
    assert plain_spread.max() < 7.0                            # the grain alone (6, clipped at the bounds)
    assert np.median(textured_spread) > 1.5 * np.median(plain_spread)
    assert len({round(float(i.float().mean()), 0) for i in plain.images}) > 20   # grey levels differ per image
    with pytest.raises(VitlabError, match="scenes background must be one of textured, plain, got 'noise'"):
        build_scenes(48, n_train=4, n_val=4, background="noise")


def test_scenes_spec_with_background():
    from vitlab.data import build_data
    from vitlab.data.object_scenes import parse_scenes_spec

    assert parse_scenes_spec("scenes") == (2000, "textured", "default")
    assert parse_scenes_spec("scenes:12,background=plain") == (12, "plain", "default")
    assert parse_scenes_spec("scenes,background=textured") == (2000, "textured", "default")
    assert parse_scenes_spec("scenes:12,object_size=large,background=plain") == (12, "plain", "large")
    bundle = build_data("scenes:12,background=plain", 32)
    assert len(bundle.train) == 12 and len(bundle.val) == 3 and bundle.train.masks.shape == (12, 32, 32)
    for bad in ("scenes:0", "scenes:12,background=grass", "scenes:12,size=large", "scenes:x",
                "scenes:4,background=plain,background=plain", "scenes:4,object_size=huge", "scenes:4,objects=large",
                "scenes:4,object_size=large,object_size=large", "scenes:4,object_size=default,background=plain,x=1"):
        with pytest.raises(VitlabError, match=r"expected scenes or scenes:N, then optionally "
                                              r",background=textured\|plain and ,object_size=default\|large"):
            parse_scenes_spec(bad)


def test_scenes_large_objects():
    """object_size=large doubles the radii: same shapes, colours and labels from the same stream, ~4x the area."""
    from vitlab.data.object_scenes import build_object_scenes

    default = build_object_scenes(64, seed=2, n_train=200, n_val=4)
    large = build_object_scenes(64, seed=2, n_train=200, n_val=4, object_size="large")
    assert large.train.labels.tolist() == default.train.labels.tolist()   # radii come after the shape draw
    ratio = float(large.train.masks.float().mean() / default.train.masks.float().mean())
    assert 3.0 < ratio < 5.0, ratio                     # E[r^2] of the ranges gives 4.0 (measured 3.9)
    for masks in (large.train.masks, default.train.masks):
        assert masks.flatten(1).any(1).all()                              # every image keeps its object
    assert build_data_spec_area("scenes:40,object_size=large") > 2.5 * build_data_spec_area("scenes:40")
    with pytest.raises(VitlabError, match="scenes object_size must be one of default, large, got 'huge'"):
        build_object_scenes(32, n_train=4, object_size="huge")


def build_data_spec_area(spec: str) -> float:
    from vitlab.data import build_data

    return float(build_data(spec, 32).train.masks.float().mean())
