import io
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from vitlab.data import build_data
from vitlab.errors import VitlabError

from .helpers import write_image


def test_flat_folder_split_is_stratified_deterministic_and_sorted(make_folder):
    root = make_folder({"zebra": 8, "ant": 8, "Moth": 4})
    a = build_data(str(root), 16, val_fraction=0.25, seed=1)
    b = build_data(str(root), 16, val_fraction=0.25, seed=1)
    c = build_data(str(root), 16, val_fraction=0.25, seed=2)
    assert a.classes == ["Moth", "ant", "zebra"] and a.name == str(root)
    assert (len(a.train), len(a.val)) == (15, 5)
    assert a.val.class_counts().tolist() == [1, 2, 2]  # stratified
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.val.labels, b.val.labels)
    assert not torch.equal(a.train.images, c.train.images)
    assert a.train.images.shape == (15, 3, 16, 16) and a.train.images.dtype == torch.uint8
    assert a.skipped == []


def test_split_falls_back_when_a_class_has_one_image(make_folder):
    bundle = build_data(str(make_folder({"a": 6, "b": 1})), 8)
    assert len(bundle.train) + len(bundle.val) == 7 and bundle.classes == ["a", "b"]


def test_train_val_layout_and_test_alias(make_folder, tmp_path):
    root = make_folder({"cat": 4, "dog": 3}, sub="train")
    make_folder({"cat": 2, "dog": 1}, sub="val", root=root)
    bundle = build_data(str(root), 12)
    assert (len(bundle.train), len(bundle.val)) == (7, 3) and bundle.classes == ["cat", "dog"]
    assert bundle.val.labels.tolist() == [0, 0, 1]
    other = make_folder({"x": 2, "y": 2}, sub="train", root=tmp_path / "t")
    make_folder({"x": 1, "y": 1}, sub="test", root=other)
    assert len(build_data(str(other), 8).val) == 2


def test_extensions_case_insensitive_and_nested(tmp_path):
    root = tmp_path / "ext"
    for i, (name, fmt) in enumerate([("a.JPG", "JPEG"), ("b.jpeg", "JPEG"), ("c.Png", "PNG"), ("d.bmp", "BMP"),
                                     ("e.gif", "GIF"), ("f.TIF", "TIFF"), ("g.tiff", "TIFF"), ("h.webp", "WEBP")]):
        write_image(root / ("one" if i % 2 else "two") / "deep" / name, fmt=fmt)
    (root / "one" / "notes.txt").write_text("not an image")
    bundle = build_data(str(root), 8, val_fraction=0.25)
    assert len(bundle.train) + len(bundle.val) == 8 and bundle.skipped == []


def test_lazy_and_cached_give_equal_tensors(make_folder):
    root = make_folder({"a": 5, "b": 5})
    cached = build_data(str(root), 16, cache_bytes=2**30)
    lazy = build_data(str(root), 16, cache_bytes=0)
    assert cached.train.images is not None and lazy.train.images is None and lazy.val.images is None
    assert lazy.train.files is not None and len(lazy.train) == len(cached.train)
    assert torch.equal(lazy.train.labels, cached.train.labels)
    for i in range(len(lazy.train)):
        image, label = lazy.train[i]
        assert torch.equal(image, cached.train.images[i]) and label == int(cached.train.labels[i])


def _truncated_jpeg(path):
    noise = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="JPEG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


def _add_bad_files(root):
    (root / "a" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    (root / "b" / "empty.jpg").write_bytes(b"")
    _truncated_jpeg(root / "a" / "half.jpg")
    return {str(root / "a" / "corrupt.png"), str(root / "b" / "empty.jpg"), str(root / "a" / "half.jpg")}


def test_bad_files_skipped_and_named(make_folder, caplog):
    root = make_folder({"a": 4, "b": 4}, sub="train")
    make_folder({"a": 2, "b": 2}, sub="val", root=root)
    bad = _add_bad_files(root / "train")
    with caplog.at_level(logging.WARNING, logger="vitlab.data"):
        bundle = build_data(str(root), 8)
    assert set(bundle.skipped) == bad and set(bundle.train.skipped) == bad and bundle.val.skipped == []
    assert len(bundle.train) == 8 and bundle.train.images.shape == (8, 3, 8, 8)
    assert all(any(path in record.getMessage() for record in caplog.records) for path in bad)


def test_bad_files_in_lazy_set_found_while_reading(make_folder):
    root = make_folder({"a": 3, "b": 3}, sub="train")
    make_folder({"a": 1, "b": 1}, sub="val", root=root)
    bad = _add_bad_files(root / "train")
    bundle = build_data(str(root), 8, cache_bytes=0)
    assert len(bundle.train) + len(bundle.train.skipped) == 9
    for i in range(len(bundle.train)):
        try:
            bundle.train[i]
        except VitlabError as e:
            assert "cannot decode" in str(e)
    assert set(bundle.skipped) == bad


def test_odd_modes_in_a_folder(tmp_path):
    root = tmp_path / "modes"
    (root / "x").mkdir(parents=True)
    p = Image.new("P", (6, 6), 0)
    p.putpalette([10, 200, 30] + [0] * 765)
    images = {
        "l.png": Image.new("L", (6, 6), 90), "la.png": Image.new("LA", (6, 6), (90, 0)), "p.png": p,
        "rgba.png": Image.new("RGBA", (6, 6), (1, 2, 3, 0)), "cmyk.tif": Image.new("CMYK", (6, 6), (0, 0, 0, 0)),
        "i16.png": Image.fromarray(np.full((6, 6), 65535, np.uint16)), "one.png": Image.new("1", (6, 6), 1),
    }
    expected = {"l.png": 90, "la.png": 255, "p.png": (10, 200, 30), "rgba.png": 255, "cmyk.tif": 255,
                "i16.png": 255, "one.png": 255, "pt.png": 255}
    for name, img in images.items():
        img.save(root / "x" / name)
    p.save(root / "x" / "pt.png", transparency=0)
    (root / "y").mkdir()
    images["l.png"].save(root / "y" / "l.png")
    bundle = build_data(str(root), 4, cache_bytes=0)
    for imageset in (bundle.train, bundle.val):
        for i, path in enumerate(imageset.files):
            image, _ = imageset[i]
            assert image.shape == (3, 4, 4) and image.dtype == torch.uint8
            want = torch.tensor(expected[path.split("/")[-1]], dtype=torch.uint8).expand(3).reshape(3, 1, 1)
            assert torch.equal(image, want.expand(3, 4, 4)), path
    assert bundle.skipped == [] and len(bundle.train) + len(bundle.val) == 9


def test_every_file_corrupt_is_an_error(tmp_path):
    for name in ("a", "b"):
        (tmp_path / "bad" / name).mkdir(parents=True)
        for i in range(2):
            (tmp_path / "bad" / name / f"{i}.jpg").write_bytes(b"nope")
    for cache_bytes in (2**30, 0):
        with pytest.raises(VitlabError, match="could be decoded"):
            build_data(str(tmp_path / "bad"), 8, cache_bytes=cache_bytes)
