"""Caption data: a user's CSV (comma or tab, caption or title column) and COCO captions JSON, bad rows skipped,
named and counted; several captions of one image kept together; the scenes captions in reading order."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from vitlab.data.captions import build_caption_data, caption_batches, reading_order_caption
from vitlab.data.scenes import ObjectSpec
from vitlab.errors import VitlabError


def _images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(folder / name)


def test_csv_rows_skipped_and_counted(tmp_path):
    _images(tmp_path, [f"{i}.png" for i in range(6)])
    (tmp_path / "broken.png").write_bytes(b"not a png")
    rows = ["filepath,caption", "0.png,A red star", '1.png,"a blue ring, and a cross"', "2.png,a square",
            "3.png,a ring", "4.png,a circle", "5.png,a star", "0.png,a second caption of image 0",
            "missing.png,a caption", "1.png,   ", "broken.png,a caption"]
    (tmp_path / "captions.csv").write_text("\n".join(rows) + "\n")
    data = build_caption_data(str(tmp_path), 16, val_fraction=0.34)
    assert len(data.skipped) == 3
    assert "row 9: missing image missing.png" in data.skipped[0]
    assert "row 10: empty caption (1.png)" in data.skipped[1]
    assert "row 11:" in data.skipped[2] and "cannot decode" in data.skipped[2]
    assert len(data.train) + len(data.val) == 6 and len(data.val) == 2
    refs = dict(zip(data.train.names + data.val.names, data.train.references + data.val.references))
    assert refs["0.png"] == ["a red star", "a second caption of image 0"]      # lower case, both kept
    assert refs["1.png"] == ["a blue ring, and a cross"]
    assert data.train.images.shape[1:] == (3, 16, 16) and data.train.images.dtype == torch.uint8
    assert data.classes[:4] == ["<pad>", "<s>", "</s>", "<unk>"]
    images, targets = next(caption_batches(data.train, data.tokenizer, 2, shuffle=False))
    assert images.shape == (2, 3, 16, 16) and targets["ids"][:, 0].tolist() == [data.tokenizer.bos_id] * 2


def test_tsv_with_open_clip_title_column(tmp_path):
    _images(tmp_path / "imgs", ["a.png", "b.png", "c.png"])
    (tmp_path / "train.tsv").write_text("filepath\ttitle\nimgs/a.png\tone\nimgs/b.png\ttwo\nimgs/c.png\tthree\n")
    data = build_caption_data(str(tmp_path / "train.tsv"), 8, val_fraction=0.3)
    assert data.skipped == [] and sorted(r[0] for r in data.train.references + data.val.references) == \
        ["one", "three", "two"]


def test_coco_captions_json(tmp_path):
    _images(tmp_path / "train2017", ["x.jpg", "y.jpg", "z.jpg"])
    (tmp_path / "annotations").mkdir()
    coco = {"images": [{"id": 1, "file_name": "train2017/x.jpg"}, {"id": 2, "file_name": "train2017/y.jpg"},
                       {"id": 3, "file_name": "train2017/z.jpg"}, {"id": 4, "file_name": "train2017/gone.jpg"}],
            "annotations": [{"image_id": 1, "caption": "A cat."}, {"image_id": 1, "caption": "A small cat."},
                            {"image_id": 2, "caption": "A dog."}, {"image_id": 3, "caption": ""},
                            {"image_id": 3, "caption": "A bird."}, {"image_id": 9, "caption": "nobody"},
                            {"image_id": 4, "caption": "lost"}]}
    (tmp_path / "annotations" / "captions_train2017.json").write_text(json.dumps(coco))
    data = build_caption_data(str(tmp_path / "annotations"), 8, val_fraction=0.3)
    assert len(data.skipped) == 3
    assert "unknown image_id 9" in data.skipped[0]
    assert "empty caption" in data.skipped[1] and "missing image train2017/gone.jpg" in data.skipped[2]
    refs = dict(zip(data.train.names + data.val.names, data.train.references + data.val.references))
    assert refs["train2017/x.jpg"] == ["a cat.", "a small cat."]


def test_bad_caption_files_are_one_line_errors(tmp_path):
    (tmp_path / "c.csv").write_text("path,text\na.png,b\n")
    with pytest.raises(VitlabError, match="the header must name filepath and caption"):
        build_caption_data(str(tmp_path / "c.csv"), 8)
    with pytest.raises(VitlabError, match="does not exist"):
        build_caption_data(str(tmp_path / "nope"), 8)
    (tmp_path / "d.csv").write_text("filepath,caption\nmissing.png,x\n")
    with pytest.raises(VitlabError, match="0 usable images"):
        build_caption_data(str(tmp_path / "d.csv"), 8)


def test_scenes_captions_name_objects_left_to_right():
    def obj(shape, colour, cx):
        return ObjectSpec(shape, colour, "small", cx, 20.0, 4.0, 0.0, (0, 0, 0))

    objects = [obj("star", "red", 50.0), obj("ring", "blue", 10.0)]               # drawn right one first
    boxes = torch.tensor([[46.0, 16.0, 54.0, 24.0], [6.0, 16.0, 14.0, 24.0]])
    assert reading_order_caption(objects, boxes) == "a small blue ring to the left of a small red star"
    data = build_caption_data("scenes", 32, n_train=4, n_val=2)
    assert data.skipped == [] and data.val.objects is not None and len(data.val.objects) == 2
    assert all(o.mask.shape == (32, 32) for objs in data.train.objects for o in objs)
