import re

import pytest

from vitlab.data import build_data
from vitlab.errors import VitlabError


def test_missing_path(tmp_path):
    path = tmp_path / "nowhere"
    with pytest.raises(VitlabError, match="does not exist") as info:
        build_data(str(path), 8)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_empty_dir(tmp_path):
    with pytest.raises(VitlabError, match="no images") as info:
        build_data(str(tmp_path), 8)
    assert str(tmp_path) in str(info.value) and "class subfolders" in str(info.value)


def test_dir_without_images(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "readme.txt").write_text("hello")
    (tmp_path / "b").mkdir()
    with pytest.raises(VitlabError, match="no images") as info:
        build_data(str(tmp_path), 8)
    assert str(tmp_path) in str(info.value)


def test_images_without_class_folders(tmp_path, make_folder):
    make_folder({"a": 2}, root=tmp_path)
    (tmp_path / "a" / "000.png").rename(tmp_path / "loose.png")
    (tmp_path / "a" / "001.png").unlink()
    with pytest.raises(VitlabError, match=re.escape(str(tmp_path))):
        build_data(str(tmp_path), 8)


def test_a_file_is_not_a_dataset(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(b"")
    with pytest.raises(VitlabError, match="is a file") as info:
        build_data(str(path), 8)
    assert str(path) in str(info.value)


def test_train_without_val(make_folder):
    root = make_folder({"a": 2}, sub="train")
    with pytest.raises(VitlabError, match="no val/ or test/"):
        build_data(str(root), 8)


def test_bad_sizes(make_folder):
    with pytest.raises(VitlabError, match="image size"):
        build_data("digits", 0)
    with pytest.raises(VitlabError, match="val_fraction"):
        build_data(str(make_folder({"a": 4})), 8, val_fraction=1.5)
