"""CIFAR-10/100 python folders and MNIST idx files, written tiny by the tests."""
import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from vitlab.data import build_data
from vitlab.errors import VitlabError

RNG = np.random.default_rng(0)


def _pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def write_cifar10(folder, per_batch=4):
    folder.mkdir(parents=True)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    _pickle(folder / "batches.meta", {b"label_names": names, b"num_vis": 3072})
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = RNG.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = RNG.integers(0, 10, per_batch).tolist()
        _pickle(folder / name, {b"data": data, b"labels": labels, b"batch_label": name.encode()})
        batches[name] = (data, labels)
    return batches


def test_cifar10_folder_and_parent(tmp_path):
    batches = write_cifar10(tmp_path / "cifar-10-batches-py")
    for spec in (tmp_path / "cifar-10-batches-py", tmp_path):
        bundle = build_data(str(spec), 32)
        assert bundle.classes[0] == "airplane" and len(bundle.classes) == 10
        assert (len(bundle.train), len(bundle.val)) == (20, 4)
        data, labels = batches["data_batch_1"]
        assert torch.equal(bundle.train.images[:4], torch.from_numpy(data).view(4, 3, 32, 32))
        assert bundle.train.labels[:4].tolist() == labels
        test_data, test_labels = batches["test_batch"]
        assert torch.equal(bundle.val.images, torch.from_numpy(test_data).view(4, 3, 32, 32))
        assert bundle.val.labels.tolist() == test_labels
    # channel planes: pixel (row 0, col 1) of image 0 is data[0, 1], data[0, 1025], data[0, 2049]
    assert bundle.train.images[0, :, 0, 1].tolist() == [int(data[0, 1]), int(data[0, 1025]), int(data[0, 2049])]


def test_cifar_resized_and_lazy(tmp_path):
    write_cifar10(tmp_path / "c")
    cached = build_data(str(tmp_path / "c"), 16)
    lazy = build_data(str(tmp_path / "c"), 16, cache_bytes=0)
    assert cached.train.images.shape == (20, 3, 16, 16) and lazy.train.images is None
    for i in (0, 7, 19):
        assert torch.equal(lazy.train[i][0], cached.train.images[i])


def test_cifar100(tmp_path):
    folder = tmp_path / "data" / "cifar-100-python"
    folder.mkdir(parents=True)
    fine = [f"class{i:02d}".encode() for i in range(100)]
    _pickle(folder / "meta", {b"fine_label_names": fine, b"coarse_label_names": [b"c"] * 20})
    train = RNG.integers(0, 256, (6, 3072), dtype=np.uint8)
    _pickle(folder / "train", {b"data": train, b"fine_labels": [0, 5, 99, 3, 3, 1], b"coarse_labels": [0] * 6})
    _pickle(folder / "test", {b"data": train[:2], b"fine_labels": [7, 8], b"coarse_labels": [0] * 2})
    bundle = build_data(str(tmp_path / "data"), 32)
    assert len(bundle.classes) == 100 and bundle.classes[99] == "class99"
    assert bundle.train.labels.tolist() == [0, 5, 99, 3, 3, 1] and bundle.val.labels.tolist() == [7, 8]
    assert torch.equal(bundle.val.images, torch.from_numpy(train[:2]).view(2, 3, 32, 32))


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(folder, n_train=6, n_test=3, gz=False, sep="-"):
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = RNG.integers(0, 10, n).astype(np.uint8)
        arrays[split] = (images, labels)
        for kind, array, ndim in (("images", images, 3), ("labels", labels, 1)):
            name = f"{split}-{kind}{sep}idx{ndim}-ubyte"
            data = _idx_bytes(array)
            if gz:
                with gzip.open(folder / f"{name}.gz", "wb") as f:
                    f.write(data)
            else:
                (folder / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx(tmp_path, gz):
    arrays = write_idx(tmp_path / "MNIST" / "raw", gz=gz)
    for spec in (tmp_path / "MNIST" / "raw", tmp_path / "MNIST", tmp_path):
        bundle = build_data(str(spec), 28)
        assert bundle.classes == [str(i) for i in range(10)]
        assert (len(bundle.train), len(bundle.val)) == (6, 3)
        images, labels = arrays["train"]
        assert bundle.train.labels.tolist() == labels.tolist()
        for c in range(3):
            assert torch.equal(bundle.train.images[:, c], torch.from_numpy(images))
        assert bundle.val.labels.tolist() == arrays["t10k"][1].tolist()


def test_idx_resize_lazy_and_classes_file(tmp_path):
    write_idx(tmp_path / "fashion", sep=".")
    (tmp_path / "fashion" / "classes.txt").write_text("\n".join(f"item{i}" for i in range(10)) + "\n")
    cached = build_data(str(tmp_path / "fashion"), 14)
    lazy = build_data(str(tmp_path / "fashion"), 14, cache_bytes=0)
    assert cached.classes[3] == "item3" and cached.train.images.shape == (6, 3, 14, 14)
    assert lazy.train.images is None and torch.equal(lazy.train[2][0], cached.train.images[2])


def test_idx_bad_magic(tmp_path):
    write_idx(tmp_path / "m")
    (tmp_path / "m" / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x0d\x01" + b"\x00" * 10)
    with pytest.raises(VitlabError, match="idx"):
        build_data(str(tmp_path / "m"), 28)
