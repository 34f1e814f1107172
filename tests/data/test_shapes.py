import time

import torch

from vitlab.data import SHAPE_CLASSES, build_data


def test_shapes_deterministic_and_seeded():
    a = build_data("shapes", 32, seed=3, shapes_per_class=20)
    b = build_data("shapes", 32, seed=3, shapes_per_class=20)
    c = build_data("shapes", 32, seed=4, shapes_per_class=20)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.train.labels, b.train.labels)
    assert torch.equal(a.val.images, b.val.images)
    assert not torch.equal(a.train.images, c.train.images)
    assert not torch.equal(a.train.images[:len(a.val)], a.val.images)  # val drawn from another stream


def test_shapes_layout_and_classes():
    bundle = build_data("shapes", 32, shapes_per_class=20)
    assert bundle.name == "shapes" and bundle.classes == SHAPE_CLASSES and len(SHAPE_CLASSES) >= 5
    assert bundle.train.images.shape == (20 * len(SHAPE_CLASSES), 3, 32, 32)
    assert bundle.train.images.dtype == torch.uint8 and bundle.train.labels.dtype == torch.int64
    assert bundle.train.class_counts().tolist() == [20] * len(SHAPE_CLASSES)
    assert bundle.val.class_counts().tolist() == [5] * len(SHAPE_CLASSES)


def test_shapes_object_is_localised():
    """The shape differs from the background in a minority of pixels: it is there but does not fill the image."""
    bundle = build_data("shapes", 32, shapes_per_class=10)
    images = bundle.train.images.float()  # (N, 3, 32, 32)
    border = torch.cat([images[:, :, 0], images[:, :, -1], images[:, :, :, 0], images[:, :, :, -1]], dim=2)
    for image, edge in zip(images, border):
        # pixels far from the background's median colour along the border
        distance = (image - edge.median(dim=1).values[:, None, None]).norm(dim=0)
        fraction = (distance > 60).float().mean()
        assert 0.02 < fraction < 0.6


def test_shapes_default_size_is_fast():
    start = time.perf_counter()
    bundle = build_data("shapes", 32)
    assert 2000 <= len(bundle.train) <= 6000
    assert time.perf_counter() - start < 10.0  # ~0.5 s on one core; generous for a shared machine


def test_shapes_object_sizes():
    """objects="large" draws the same classes with radii twice as large (the object covers ~4x the pixels); the
    default draws the bytes of "small"; an unknown size is refused by name."""
    import numpy as np
    import pytest

    from vitlab.data.shapes import OBJECT_RADII, generate_shapes

    def covered(images):                       # per image: the fraction of pixels of its most common colour,
        counts = []                            # the object's flat fill (the background has pixel grain)
        for image in images.images:
            _, n = image.reshape(3, -1).T.unique(dim=0, return_counts=True)
            counts.append(n.max().item() / image[0].numel())
        return torch.tensor(counts)

    small = generate_shapes(20, 32, np.random.default_rng(5))
    assert torch.equal(small.images, generate_shapes(20, 32, np.random.default_rng(5), objects="small").images)
    large = generate_shapes(20, 32, np.random.default_rng(5), objects="large")
    assert torch.equal(small.labels, large.labels)
    assert OBJECT_RADII["large"] == (0.30, 0.45) and OBJECT_RADII["small"] == (0.15, 0.28)
    ratio = covered(large).mean() / covered(small).mean()
    assert 2.6 < ratio < 3.6, ratio               # E[r^2]: 0.1425 / 0.0459 = 3.1 (area scales as r^2)
    with pytest.raises(ValueError, match="objects must be one of small, large, got 'huge'"):
        generate_shapes(2, 32, np.random.default_rng(0), objects="huge")
