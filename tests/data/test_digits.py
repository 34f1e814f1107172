import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from vitlab.data import build_data, digits_svc_reference


def test_digits_split_matches_sklearn_exactly():
    bundle = build_data("digits", 8)
    digits = load_digits()
    X_train, X_val, y_train, y_val = train_test_split(digits.images, digits.target, test_size=0.25,
                                                      stratify=digits.target, random_state=0)
    assert (len(bundle.train), len(bundle.val)) == (1347, 450)
    assert bundle.classes == [str(d) for d in range(10)] and bundle.name == "digits"
    assert torch.equal(bundle.train.labels, torch.from_numpy(y_train).long())
    assert torch.equal(bundle.val.labels, torch.from_numpy(y_val).long())
    for imageset, X in ((bundle.train, X_train), (bundle.val, X_val)):
        assert imageset.images.dtype == torch.uint8 and imageset.images.shape == (len(X), 3, 8, 8)
        expected = torch.from_numpy(np.round(X * 255 / 16).astype(np.uint8))
        for c in range(3):  # gray replicated
            assert torch.equal(imageset.images[:, c], expected)
    assert int(bundle.train.images.max()) == 255 and bundle.skipped == []


def test_digits_resized_keeps_labels_and_range():
    small, big = build_data("digits", 8), build_data("digits", 32)
    assert big.train.images.shape == (1347, 3, 32, 32) and big.val.image_size == 32
    assert torch.equal(small.train.labels, big.train.labels)
    # bilinear resize preserves the mean brightness closely
    assert abs(small.train.images.float().mean() - big.train.images.float().mean()) < 2.0
    image, label = big.train[0]
    assert image.shape == (3, 32, 32) and isinstance(label, int)


def test_svc_reference():
    assert digits_svc_reference() >= 98.5
