import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitlab.cli import main
from vitlab.data import DetectionSet, build_detection_data, detection_batches, is_coco_folder
from vitlab.data.coco import export_scenes, mask_to_rle
from vitlab.data.scenes import build_scenes
from vitlab.errors import VitlabError

from .helpers import write_image

CATEGORIES = [{"id": 90, "name": "zebra"}, {"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]  # ids not contiguous


def _ann(i, image_id, cat, bbox, **extra):
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": bbox, "area": 1.0, "iscrowd": 0} | extra


def _write_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


@pytest.fixture
def coco_root(tmp_path):
    """COCO as shipped (train2017/val2017) with one of each bad annotation in train."""
    root = tmp_path / "coco"
    write_image(root / "train2017" / "a.png", (40, 30))
    write_image(root / "train2017" / "b.png", (20, 20))
    (root / "train2017" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    train_images = [{"id": 11, "file_name": "a.png", "width": 40, "height": 30},
                    {"id": 12, "file_name": "missing.png", "width": 10, "height": 10},
                    {"id": 13, "file_name": "corrupt.jpg", "width": 10, "height": 10},
                    {"id": 14, "file_name": "b.png", "width": 20, "height": 20}]
    train_anns = [_ann(1, 11, 7, [4, 6, 10, 8], area=70.0),     # fine
                  _ann(2, 11, 90, [30, 20, 20, 20]),             # partly outside: clipped to [30, 20, 10, 10]
                  _ann(3, 11, 3, [5, 5, 0, 4]),                  # zero area: dropped
                  _ann(4, 11, 3, [5, 5, -3, 4]),                 # negative: dropped
                  _ann(5, 11, 7, [50, 40, 5, 5]),                # wholly outside: dropped
                  _ann(6, 11, 3, [1, 1, 5, 5], iscrowd=1),       # crowd: kept, flagged
                  _ann(7, 12, 3, [1, 1, 2, 2]), _ann(8, 13, 3, [1, 1, 2, 2])]  # on images that fail to load
    _write_json(root / "annotations" / "instances_train2017.json",
                {"images": train_images, "annotations": train_anns, "categories": CATEGORIES})
    write_image(root / "val2017" / "c.png", (30, 30))
    _write_json(root / "annotations" / "instances_val2017.json",
                {"images": [{"id": 21, "file_name": "c.png", "width": 30, "height": 30}],
                 "annotations": [_ann(1, 21, 90, [0, 0, 15, 30])], "categories": CATEGORIES})
    return root


def test_noncontiguous_category_ids_are_mapped(coco_root):
    bundle = build_detection_data(str(coco_root), 16)
    assert bundle.classes == ["cat", "dog", "zebra"] and bundle.train.category_ids == [3, 7, 90]
    assert len(bundle.train) == 2 and len(bundle.val) == 1 and bundle.train.image_ids == [11, 14]
    assert bundle.train.orig_sizes == [(30, 40), (20, 20)] and bundle.train.file_names == ["a.png", "b.png"]
    target = bundle.train.targets[0]
    expected = torch.tensor([[9 / 40, 10 / 30, 10 / 40, 8 / 30], [35 / 40, 25 / 30, 10 / 40, 10 / 30],
                             [3.5 / 40, 3.5 / 30, 5 / 40, 5 / 30]])
    torch.testing.assert_close(target["boxes"], expected)
    assert target["labels"].tolist() == [1, 2, 0] and target["iscrowd"].tolist() == [False, False, True]
    assert len(bundle.train.targets[1]["boxes"]) == 0  # an image without annotations is kept
    assert bundle.val.targets[0]["labels"].tolist() == [2]


def test_images_squashed_into_memory(coco_root):
    bundle = build_detection_data(str(coco_root), 16)
    reference = Image.open(coco_root / "train2017" / "a.png").convert("RGB").resize((16, 16), Image.BILINEAR)
    assert bundle.train.images.shape == (2, 3, 16, 16) and bundle.train.images.dtype == torch.uint8
    assert torch.equal(bundle.train.images[0], torch.from_numpy(np.asarray(reference).copy()).permute(2, 0, 1))


def test_each_bad_annotation_is_counted(coco_root, caplog):
    with caplog.at_level("WARNING"):
        bundle = build_detection_data(str(coco_root), 16)
    assert bundle.train.stats == {"clipped_boxes": 1, "dropped_boxes": 3, "crowd_boxes": 1, "skipped_images": 2}
    assert bundle.stats == bundle.train.stats  # val is clean
    assert [Path(p).name for p in bundle.skipped] == ["missing.png", "corrupt.jpg"]
    assert "missing.png" in caplog.text and "corrupt.jpg" in caplog.text and "skipped" in caplog.text


def test_crowd_boxes_dropped_from_training_batches(coco_root):
    train = build_detection_data(str(coco_root), 16).train
    (_, targets), = detection_batches(train, 4, shuffle=False)
    assert targets[0]["labels"].tolist() == [1, 2] and not targets[0]["iscrowd"].any()
    (_, kept), = detection_batches(train, 4, shuffle=False, drop_crowd=False)
    assert kept[0]["labels"].tolist() == [1, 2, 0]
    assert train.targets[0]["iscrowd"].tolist() == [False, False, True]  # the set itself is unchanged


def test_coco_ground_truth_in_original_pixels(coco_root):
    gt = build_detection_data(str(coco_root), 16).train.coco_ground_truth()
    assert gt["categories"] == [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}, {"id": 90, "name": "zebra"}]
    assert gt["images"][0] == {"id": 11, "width": 40, "height": 30, "file_name": "a.png"}
    rows = [(a["image_id"], a["category_id"], a["iscrowd"]) for a in gt["annotations"]]
    assert rows == [(11, 7, 0), (11, 90, 0), (11, 3, 1)]
    for ann, bbox in zip(gt["annotations"], ([4, 6, 10, 8], [30, 20, 10, 10], [1, 1, 5, 5])):
        assert ann["bbox"] == pytest.approx(bbox, abs=1e-4)
    assert gt["annotations"][0]["area"] == 70.0  # the file's area (a segment's) is kept


def test_images_folder_with_one_json_is_split_by_seed(tmp_path):
    root = tmp_path / "flat"
    images = []
    for i in range(10):
        write_image(root / "images" / f"{i}.png", (12, 10))
        images.append({"id": 100 + i, "file_name": f"{i}.png"})  # no width/height: the decoded size is used
    anns = [_ann(i + 1, 100 + i, 3, [1, 1, 6, 4]) for i in range(10)]
    _write_json(root / "labels.json", {"images": images, "annotations": anns, "categories": CATEGORIES})
    assert is_coco_folder(root)
    a = build_detection_data(str(root), 8, seed=1, val_fraction=0.2)
    b = build_detection_data(str(root), 8, seed=1, val_fraction=0.2)
    c = build_detection_data(str(root), 8, seed=2, val_fraction=0.2)
    assert len(a.val) == 2 and a.val.image_ids == b.val.image_ids and a.val.image_ids != c.val.image_ids
    assert sorted(a.train.image_ids + a.val.image_ids) == list(range(100, 110))
    assert a.train.orig_sizes[0] == (10, 12)
    torch.testing.assert_close(a.train.targets[0]["boxes"], torch.tensor([[4 / 12, 3 / 10, 6 / 12, 4 / 10]]))


def test_is_coco_folder(coco_root, tmp_path, make_folder):
    assert is_coco_folder(coco_root) and not is_coco_folder(tmp_path / "nothing")
    assert not is_coco_folder(make_folder({"cat": 2}))  # an ImageFolder
    with pytest.raises(VitlabError, match="is not a COCO folder"):
        build_detection_data(str(make_folder({"cat": 2})), 16)
    with pytest.raises(VitlabError, match="does not exist"):
        build_detection_data(str(tmp_path / "nothing"), 16)


def _flat(tmp_path, text: str) -> Path:
    root = tmp_path / "bad"
    write_image(root / "images" / "0.png")
    (root / "annotations.json").write_text(text)
    return root


@pytest.mark.parametrize("text, message", [
    ("{not json", r"annotations.json is not valid JSON: .* line 1 column 2"),
    (json.dumps({"images": [], "annotations": [], "categories": CATEGORIES}),
     r"annotations.json has no images \(an empty annotation file\)"),
    (json.dumps({"images": [{"id": 1, "file_name": "0.png"}, {"id": 2, "file_name": "0.png"}],
                 "annotations": [_ann(5, 1, 4, [0, 0, 2, 2])], "categories": CATEGORIES}),
     r"annotations.json: annotation 5 has category id 4, which is not among its categories \(3, 7, 90\)"),
    ("[1, 2]", r"annotations.json is not a COCO annotation file"),
])
def test_fatal_errors_name_the_file(tmp_path, text, message):
    root = _flat(tmp_path, text)
    with pytest.raises(VitlabError, match=message) as info:
        build_detection_data(str(root), 16)
    assert str(root / "annotations.json") in str(info.value) and "\n" not in str(info.value)


def test_val_category_unknown_to_train_is_fatal(coco_root):
    path = coco_root / "annotations" / "instances_val2017.json"
    val = json.loads(path.read_text())
    val["categories"].append({"id": 5, "name": "owl"})
    val["annotations"][0]["category_id"] = 5
    path.write_text(json.dumps(val))
    with pytest.raises(VitlabError, match="instances_val2017.json: annotation 1 has category id 5, which is not "
                                          "among the categories of instances_train2017.json"):
        build_detection_data(str(coco_root), 16)


def test_export_round_trip_is_identical(tmp_path):
    out = tmp_path / "exported"
    summary = export_scenes(out, n_train=6, n_val=3, size=32, seed=4)
    assert summary["train"] == 6 and summary["val"] == 3 and is_coco_folder(out)
    read = build_detection_data(str(out), 32)
    made = build_detection_data("scenes", 32, seed=4, scenes_train=6, scenes_val=3)
    assert read.classes == made.classes and read.train.category_ids == [1, 2, 3, 4, 5, 6]
    for a, b in ((read.train, made.train), (read.val, made.val)):
        assert torch.equal(a.images, b.images)  # PNG is lossless and the size matches: bit-identical
        assert a.image_ids == b.image_ids and a.file_names == b.file_names and a.orig_sizes == b.orig_sizes
        for ta, tb in zip(a.targets, b.targets):
            torch.testing.assert_close(ta["boxes"], tb["boxes"], atol=1e-6, rtol=0)
            assert torch.equal(ta["labels"], tb["labels"]) and torch.equal(ta["iscrowd"], tb["iscrowd"])
        assert a.coco_ground_truth() == b.coco_ground_truth()
        assert a.stats == dict.fromkeys(a.stats, 0)
    smaller = build_detection_data(str(out), 16)  # squashed on reading: normalised boxes do not change
    torch.testing.assert_close(smaller.train.targets[0]["boxes"], made.train.targets[0]["boxes"], atol=1e-6, rtol=0)


def test_export_masks_captions_and_segmentation(tmp_path):
    from pycocotools import mask as mask_utils

    export_scenes(tmp_path / "x", n_train=4, n_val=2, size=24, seed=0)
    train, val = build_scenes(24, seed=0, n_train=4, n_val=2)
    for split, scenes in (("train", train), ("val", val)):
        for i, name in enumerate(scenes.file_names):
            png = np.asarray(Image.open(tmp_path / "x" / "masks" / split / name))
            assert png.dtype == np.uint8 and np.array_equal(png, scenes.semantic_masks[i].numpy())
        captions = json.loads((tmp_path / "x" / "annotations" / f"captions_{split}.json").read_text())
        assert [a["caption"] for a in captions["annotations"]] == scenes.captions
        assert [a["image_id"] for a in captions["annotations"]] == [im["id"] for im in captions["images"]]
    coco = json.loads((tmp_path / "x" / "annotations" / "instances_train.json").read_text())
    masks = [m for image_masks in train.instance_masks for m in image_masks]
    assert len(coco["annotations"]) == len(masks)
    for ann, mask in zip(coco["annotations"], masks):
        rle = mask_utils.frPyObjects(ann["segmentation"], 24, 24)
        assert np.array_equal(mask_utils.decode(rle).astype(bool), mask.numpy())
        assert ann["area"] == int(mask.sum()) and ann["colour"] in train.captions[ann["image_id"] - 1]


def test_mask_to_rle_by_hand():
    mask = np.array([[0, 1], [1, 1]], dtype=bool)  # column-major: 0, 1, 1, 1
    assert mask_to_rle(mask) == {"size": [2, 2], "counts": [1, 3]}
    assert mask_to_rle(np.ones((1, 3), bool))["counts"] == [0, 3]


def test_cli_export(tmp_path, capsys):
    out = tmp_path / "scenes"
    assert main(["data", "export", "scenes", str(out), "--n", "3", "--n-val", "2", "--size", "16", "--seed", "1"]) == 0
    printed = capsys.readouterr().out.strip()
    assert "\n" not in printed and printed.startswith("wrote 3 train + 2 val scenes (16x16 px, seed 1")
    assert str(out) in printed
    assert len(build_detection_data(str(out), 16).train) == 3 and len(list((out / "val").glob("*.png"))) == 2


@pytest.mark.parametrize("extra, message", [(["--n", "0"], "argument --n: must be at least 1, got 0"),
                                            (["--n-val", "0"], "argument --n-val: must be at least 1, got 0"),
                                            (["--size", "8"], "argument --size: must be at least 16, got 8")])
def test_cli_bad_values(tmp_path, capsys, extra, message):
    # refused while the arguments are parsed, before anything is generated
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "export", "scenes", str(tmp_path / "o"), *extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("vitlab data export: error:") and message in err
    assert not (tmp_path / "o").exists()


def test_cli_refuses_a_file(tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("x")
    assert main(["data", "export", "scenes", str(target), "--n", "2"]) == 2
    assert "exists and is a file" in capsys.readouterr().err


def _numbered_set(n: int) -> DetectionSet:
    images = torch.zeros(n, 3, 4, 4, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)  # each image carries its index
    targets = [{"boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]]), "labels": torch.tensor([i % 3]),
                "iscrowd": torch.tensor([False])} for i in range(n)]
    return DetectionSet(["a", "b", "c"], [1, 2, 3], images, targets, list(range(n)), [(4, 4)] * n,
                        [f"{i}.png" for i in range(n)])


@pytest.mark.parametrize("shuffle", [False, True])
def test_batches_shard_over_two_ranks(shuffle):
    dataset = _numbered_set(10)
    seen = []
    for rank in range(2):
        for images, targets in detection_batches(dataset, 3, shuffle=shuffle, seed=3, epoch=1, rank=rank,
                                                 world_size=2):
            assert len(images) == len(targets)
            for image, target in zip(images, targets):
                index = int(image[0, 0, 0])
                assert int(target["labels"][0]) == index % 3  # targets travel with their images
                seen.append(index)
    assert sorted(seen) == list(range(10))  # every image once
    odd = [int(im[0, 0, 0]) for r in range(2) for ims, _ in detection_batches(_numbered_set(7), 2, shuffle=True,
                                                                              rank=r, world_size=2) for im in ims]
    assert len(odd) == 8 and set(odd) == set(range(7))  # padded like DistributedSampler


def test_batches_drop_last_and_bad_size():
    sizes = [len(x) for x, _ in detection_batches(_numbered_set(10), 4, shuffle=False, drop_last=True)]
    assert sizes == [4, 4]
    with pytest.raises(VitlabError, match="batch size must be at least 1"):
        next(detection_batches(_numbered_set(2), 0, shuffle=False))
