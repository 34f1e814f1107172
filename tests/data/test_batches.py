import logging

import pytest
import torch

from vitlab.data import ImageSet, batches, build_data, num_batches
from vitlab.errors import VitlabError


def memory_set(n: int) -> ImageSet:
    """Image i is filled with the value i, so the batch contents reveal the order."""
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 2, 2).contiguous()
    return ImageSet(["even", "odd"], torch.arange(n) % 2, 2, images=images)


def order(imageset, batch_size=4, **kw) -> list[int]:
    return [int(v) for images, _ in batches(imageset, batch_size, **kw) for v in images[:, 0, 0, 0]]


def test_deterministic_order_per_seed_and_epoch():
    data = memory_set(23)
    torch.manual_seed(123)
    a = order(data, shuffle=True, seed=5, epoch=1)
    torch.manual_seed(999)  # the global RNG plays no part
    assert order(data, shuffle=True, seed=5, epoch=1) == a
    assert sorted(a) == list(range(23))
    assert order(data, shuffle=True, seed=5, epoch=2) != a
    assert order(data, shuffle=True, seed=6, epoch=1) != a
    assert order(data, shuffle=True, seed=0, epoch=1) != order(data, shuffle=True, seed=1, epoch=0)
    assert order(data, shuffle=False) == list(range(23))


def test_batch_shapes_labels_and_drop_last():
    data = memory_set(10)
    out = list(batches(data, 4, shuffle=True))
    assert [len(labels) for _, labels in out] == [4, 4, 2] == [len(images) for images, _ in out]
    images, labels = out[0]
    assert images.dtype == torch.uint8 and images.shape[1:] == (3, 2, 2) and labels.dtype == torch.int64
    assert torch.equal(labels, images[:, 0, 0, 0].long() % 2)
    assert [len(x) for x, _ in batches(data, 4, shuffle=True, drop_last=True)] == [4, 4]
    assert num_batches(data, 4, drop_last=False) == 3 and num_batches(data, 4, drop_last=True) == 2


@pytest.mark.parametrize("n", [12, 11])
def test_world_size_two_shards_cover_each_index_once(n):
    data = memory_set(n)
    shards = [order(data, 3, shuffle=True, seed=1, epoch=4, rank=r, world_size=2) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == (n + 1) // 2
    assert set(shards[0]) | set(shards[1]) == set(range(n))
    if n % 2 == 0:  # divisible: exactly once
        assert sorted(shards[0] + shards[1]) == list(range(n))
    else:  # padded by one repeated sample, like DistributedSampler
        assert len(shards[0] + shards[1]) == n + 1
    full = order(data, 3, shuffle=True, seed=1, epoch=4)
    assert shards[0] == full[0::2][: len(shards[0])]  # the same permutation, interleaved
    for r in range(2):
        assert num_batches(data, 3, drop_last=False, world_size=2) == len(
            list(batches(data, 3, shuffle=True, rank=r, world_size=2)))
    dropped = [order(data, 3, shuffle=True, drop_last=True, rank=r, world_size=2) for r in range(2)]
    assert not set(dropped[0]) & set(dropped[1])
    assert num_batches(data, 3, drop_last=True, world_size=2) == len(dropped[0]) // 3


def test_lazy_loader_with_workers_counts_skipped(make_folder, caplog):
    root = make_folder({"a": 6, "b": 6}, sub="train")
    make_folder({"a": 1, "b": 1}, sub="val", root=root)
    (root / "train" / "b" / "broken.png").write_bytes(b"not a png")
    (root / "train" / "a" / "empty.jpg").write_bytes(b"")
    bundle = build_data(str(root), 8, cache_bytes=0)
    train = bundle.train
    assert train.images is None and len(train) == 14
    with caplog.at_level(logging.WARNING, logger="vitlab.data"):
        out = list(batches(train, 4, shuffle=True, seed=2, num_workers=2))
    assert sum(len(labels) for _, labels in out) == 12
    assert all(images.shape[1:] == (3, 8, 8) and images.dtype == torch.uint8 for images, _ in out)
    expected = {str(root / "train" / "b" / "broken.png"), str(root / "train" / "a" / "empty.jpg")}
    assert set(train.skipped) == expected and set(bundle.skipped) == expected
    assert sum("skipped" in r.getMessage() for r in caplog.records) == 2
    list(batches(train, 4, shuffle=True, seed=3, num_workers=0))  # a second epoch adds no duplicates
    assert len(train.skipped) == 2


def test_lazy_and_memory_batches_agree(make_folder):
    root = make_folder({"a": 5, "b": 4})
    cached, lazy = build_data(str(root), 8), build_data(str(root), 8, cache_bytes=0)
    for (x1, y1), (x2, y2) in zip(batches(cached.train, 3, shuffle=True, epoch=1),
                                  batches(lazy.train, 3, shuffle=True, epoch=1), strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_bad_arguments():
    with pytest.raises(VitlabError):
        next(batches(memory_set(4), 0, shuffle=False))
    with pytest.raises(VitlabError):
        next(batches(memory_set(4), 2, shuffle=False, rank=2, world_size=2))
