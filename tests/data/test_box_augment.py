import pytest
import torch

from vitlab.data.box_augment import DetectionAugment, colour_jitter, crop_and_flip


def _xyxy_to_cxcywh(box, size):
    x0, y0, x1, y1 = box
    return [(x0 + x1) / 2 / size, (y0 + y1) / 2 / size, (x1 - x0) / size, (y1 - y0) / size]


def _target(boxes_px, size, labels=None):
    n = len(boxes_px)
    return {"boxes": torch.tensor([_xyxy_to_cxcywh(b, size) for b in boxes_px], dtype=torch.float32),
            "labels": torch.tensor(labels if labels is not None else list(range(n))),
            "iscrowd": torch.tensor([False] * n)}


def test_flip_mirrors_pixels_and_box():
    x = torch.rand(1, 3, 32, 32)
    target = _target([(4, 6, 12, 20)], 32)
    out, (moved,) = crop_and_flip(x, [target], torch.tensor([[0.0, 0.0, 32, 32]]), torch.tensor([True]), 32)
    torch.testing.assert_close(out, x.flip(-1), atol=1e-5, rtol=0)
    # mirror of x in [4, 12] is [32 - 12, 32 - 4] = [20, 28]; y unchanged
    torch.testing.assert_close(moved["boxes"], torch.tensor([_xyxy_to_cxcywh((20, 6, 28, 20), 32)]))


def test_crop_maps_boxes_to_hand_computed_coordinates():
    x = torch.rand(1, 3, 64, 64)
    target = _target([(20, 12, 36, 28), (40, 30, 56, 44)], 64, labels=[3, 5])
    crop = torch.tensor([[16.0, 8.0, 32.0, 32.0]])  # x0, y0, w, h: the window [16, 48] x [8, 40]
    out, (moved,) = crop_and_flip(x, [target], crop, torch.tensor([False]), 32)
    torch.testing.assert_close(out, x[:, :, 8:40, 16:48], atol=1e-5, rtol=0)  # same scale: the pixels themselves
    # box 1 inside: ((20-16)/32, (12-8)/32, (36-16)/32, (28-8)/32); box 2 clipped at the window's right/bottom edge
    expected = torch.tensor([[0.125, 0.125, 0.625, 0.625], [24 / 32, 22 / 32, 1.0, 1.0]])
    x0, y0, x1, y1 = expected.unbind(-1)
    torch.testing.assert_close(moved["boxes"], torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], -1))
    assert moved["labels"].tolist() == [3, 5]


def test_crop_and_flip_together():
    x = torch.rand(1, 3, 64, 64)
    target = _target([(20, 12, 36, 28)], 64)
    out, (moved,) = crop_and_flip(x, [target], torch.tensor([[16.0, 8.0, 32.0, 32.0]]), torch.tensor([True]), 64)
    # crop fractions x in [0.125, 0.625] -> mirrored [0.375, 0.875]; y in [0.125, 0.625]; upscaled 2x
    torch.testing.assert_close(moved["boxes"], torch.tensor([[0.625, 0.375, 0.5, 0.5]]))
    assert out.shape == (1, 3, 64, 64)


def test_box_cropped_out_of_view_is_dropped_with_its_label_and_mask():
    size = 32
    target = _target([(2, 2, 8, 8), (20, 20, 30, 30), (14, 4, 17, 8)], size, labels=[4, 1, 2])
    target["iscrowd"] = torch.tensor([True, False, False])
    target["masks"] = torch.zeros(3, size, size, dtype=torch.bool)
    target["masks"][1, 20:30, 20:30] = True
    crop = torch.tensor([[16.0, 16.0, 16.0, 16.0]])  # box 0 wholly outside; box 2 keeps 1 px of 3 x 4 -> too little
    _, (moved,) = crop_and_flip(torch.rand(1, 3, size, size), [target], crop, torch.tensor([False]), size,
                                min_visibility=0.5)
    assert moved["labels"].tolist() == [1] and moved["iscrowd"].tolist() == [False]
    assert moved["boxes"].shape == (1, 4) and moved["masks"].shape == (1, size, size)
    # box 1 in the window: [4, 14] of 16 -> [0.25, 0.875]; its mask moved with it (upscaled 2x: rows/cols 8..27)
    torch.testing.assert_close(moved["boxes"], torch.tensor([[0.5625, 0.5625, 0.625, 0.625]]))
    rows, cols = moved["masks"][0].any(1).nonzero(), moved["masks"][0].any(0).nonzero()
    assert (int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())) == (8, 27, 8, 27)


def _white_square_batch(B=16, size=48):
    images = torch.zeros(B, 3, size, size, dtype=torch.uint8)
    targets = []
    g = torch.Generator().manual_seed(0)
    for i in range(B):
        x0, y0 = (int(v) for v in torch.randint(0, size - 14, (2,), generator=g))
        w, h = (int(v) for v in torch.randint(6, 14, (2,), generator=g))
        images[i, :, y0:y0 + h, x0:x0 + w] = 255
        targets.append(_target([(x0, y0, x0 + w, y0 + h)], size, labels=[i % 6]))
    return images, targets


def test_augmented_boxes_enclose_the_object():
    """White square on black through random crops, flips and colour jitter: each kept box encloses the white
    pixels (the object) within a pixel, and a box is only dropped when the object is (almost) out of view."""
    size = 48
    aug = DetectionAugment((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), size, crop_scale=(0.3, 1.0), crop_prob=1.0,
                           color_jitter=0.2)
    generator = torch.Generator().manual_seed(1)
    kept = 0
    for _ in range(4):
        images, targets = _white_square_batch(16, size)
        x, out_targets = aug(images, targets, generator=generator)
        assert x.shape == (16, 3, size, size) and x.dtype == torch.float32
        for image, target in zip(x, out_targets):
            white = image.mean(0) > 0.5  # (S, S)
            if len(target["boxes"]) == 0:
                assert white.sum() <= 0.1 * 14 * 14 * 4  # only a sliver of the object can be left
                continue
            kept += 1
            cx, cy, w, h = (target["boxes"][0] * size).tolist()
            rows, cols = white.any(1).nonzero(), white.any(0).nonzero()
            found = (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)
            box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
            assert all(abs(a - b) <= 1.0 for a, b in zip(box, found)), (box, found)
    assert kept >= 48  # most objects stay in view


def test_same_generator_same_augmentation():
    images, targets = _white_square_batch(64)
    aug = DetectionAugment((0.5,) * 3, (0.25,) * 3, 48)
    a = aug(images, targets, generator=torch.Generator().manual_seed(3))
    b = aug(images, targets, generator=torch.Generator().manual_seed(3))
    c = aug(images, targets, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and all(torch.equal(s["boxes"], t["boxes"]) for s, t in zip(a[1], b[1]))
    assert not torch.equal(a[0], c[0])


def test_half_the_images_are_flipped():
    images, targets = _white_square_batch(200)
    aug = DetectionAugment((0.0,) * 3, (1.0,) * 3, 48, crop_scale=(1.0, 1.0), color_jitter=0.0)
    x, out = aug(images, targets, generator=torch.Generator().manual_seed(0))
    flipped = 0
    for image, source, before, after in zip(x, images, targets, out):
        mirrored = not torch.allclose(after["boxes"], before["boxes"])
        if mirrored:
            torch.testing.assert_close(after["boxes"][:, 0], 1 - before["boxes"][:, 0])
            torch.testing.assert_close(image, source.flip(-1).float() / 255, atol=1e-5, rtol=0)
        flipped += mirrored
    assert 70 < flipped < 130


def test_eval_mode_only_normalises():
    images, targets = _white_square_batch(4)
    aug = DetectionAugment((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 48).eval()
    x, out = aug(images, targets)
    torch.testing.assert_close(x, (images.float() / 255 - 0.5) / 0.25)
    assert out is targets


def test_crop_scale_one_and_no_flip_is_identity():
    images, targets = _white_square_batch(4)
    aug = DetectionAugment((0.0,) * 3, (1.0,) * 3, 48, crop_scale=(1.0, 1.0), hflip=False, color_jitter=0.0)
    x, out = aug(images, targets)
    torch.testing.assert_close(x, images.float() / 255, atol=1e-5, rtol=0)
    for a, b in zip(out, targets):
        torch.testing.assert_close(a["boxes"], b["boxes"])


def test_colour_jitter_by_hand():
    x = torch.tensor([0.2, 0.4, 0.6]).view(1, 3, 1, 1).expand(1, 3, 2, 2).clone()
    torch.testing.assert_close(colour_jitter(x, torch.ones(1, 3)), x)
    torch.testing.assert_close(colour_jitter(x, torch.tensor([[1.5, 1.0, 1.0]])), x * 1.5)
    grey = 0.299 * 0.2 + 0.587 * 0.4 + 0.114 * 0.6
    torch.testing.assert_close(colour_jitter(x, torch.tensor([[1.0, 1.0, 0.0]])), torch.full_like(x, grey))


@pytest.mark.parametrize("scale", [(0.5, 1.0), (0.1, 0.2)])
def test_sampled_crops_lie_inside_the_image(scale):
    aug = DetectionAugment((0.0,) * 3, (1.0,) * 3, 32, crop_scale=scale, crop_prob=1.0)
    crops = aug.sample_crops(500, 40, 30, torch.Generator().manual_seed(0))
    x0, y0, w, h = crops.unbind(1)
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x0 + w <= 30 + 1e-4).all() and (y0 + h <= 40 + 1e-4).all()
    area = w * h / (40 * 30)
    assert float(area.min()) >= scale[0] - 1e-4 and float(area.max()) <= scale[1] + 1e-4
