"""`scenes:N,objects=A-B` for CLIP: training images hold A..B objects, the val scenes keep 1..3; bad specs refused."""
from __future__ import annotations

from collections import Counter

import pytest

from vitlab.data.image_text import build_image_text_data, parse_scenes_pairs_spec
from vitlab.errors import VitlabError


def counts(pair_set) -> Counter:
    return Counter(len(shapes) for shapes in pair_set.shapes)


@pytest.mark.parametrize("objects,want", [("1", {1}), ("1-1", {1}), ("2-3", {2, 3}), ("1-2", {1, 2})])
def test_training_images_hold_the_object_counts_asked(objects, want):
    data = build_image_text_data(f"scenes:120,objects={objects}", 32)
    assert set(counts(data.train)) == want                       # every count asked occurs, no other
    assert set(counts(data.val)) == {1, 2, 3}                    # val is the default mix, comparable across runs
    singles = [c for c, s in zip(data.train.captions, data.train.shapes) if len(s) == 1]
    assert all(" and " not in c and len(c.split()) == 4 for c in singles)   # "a small red circle"


def test_default_mix_unchanged_and_val_identical():
    plain, ranged = build_image_text_data("scenes:120", 32), build_image_text_data("scenes:120,objects=1-3", 32)
    assert plain.train.captions == ranged.train.captions and set(counts(plain.train)) == {1, 2, 3}
    single = build_image_text_data("scenes:120,objects=1", 32)
    assert single.val.captions == plain.val.captions and bool((single.val.images == plain.val.images).all())


def test_spec_parsing():
    assert parse_scenes_pairs_spec("scenes") == (4000, None)
    assert parse_scenes_pairs_spec("scenes:800,objects=1-2") == (800, (1, 2))
    assert parse_scenes_pairs_spec("scenes:objects=2") == (4000, (2, 2))
    for bad in ("scenes:0", "scenes:x", "scenes:80,objects=3-1", "scenes:80,objects=0-2", "scenes:80,objects=a",
                "scenes:80,objects=1-2-3", "scenes:80,colours=2", "scenes:80,objects=1,objects=2"):
        with pytest.raises(VitlabError, match="expected scenes, scenes:N or scenes:N,objects=A-B"):
            build_image_text_data(bad, 32)
