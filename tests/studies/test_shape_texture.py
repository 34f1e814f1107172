"""shape-texture: the cue-conflict images (labels, exact textures, flat silhouettes, same seed same bytes), the
shape-bias measure and the verdict on numbers worked by hand, evaluation through a model that reads only texture,
and the quick run's JSON and picture."""
import argparse
import json

import numpy as np
import pytest
import torch
from torch import nn

from vitlab.data import cue_conflict
from vitlab.errors import VitlabError
from vitlab.studies.shape_texture import class_order, evaluate, held_out_sets, shape_bias, summarize
from vitlab.studies.verdict import NOT_REPRODUCED, REPRODUCED, SMOKE_TEST


def test_conflicts_cover_every_ordered_pair_once_per_repeat_and_tests_lack_one_cue():
    cues = cue_conflict.generate("conflict", 3, 4, 16, np.random.default_rng(0))
    pairs = sorted(zip(cues.shape.tolist(), cues.texture.tolist()))
    assert pairs == sorted([(i, j) for i in range(4) for j in range(4) if i != j] * 3)
    content = cue_conflict.generate("content", 2, 3, 16, np.random.default_rng(0))
    assert torch.equal(content.shape, content.texture) and torch.bincount(content.shape).tolist() == [2, 2, 2]
    assert (cue_conflict.generate("texture", 2, 3, 16, np.random.default_rng(0)).shape == -1).all()
    assert (cue_conflict.generate("shape", 2, 3, 16, np.random.default_rng(0)).texture == -1).all()
    with pytest.raises(ValueError, match="2 to 6 classes"):
        cue_conflict.generate("content", 1, 7, 16, np.random.default_rng(0))


def test_same_seed_same_bytes():
    a, b, c = (cue_conflict.generate("conflict", 2, 3, 32, np.random.default_rng(s)) for s in (5, 5, 6))
    assert torch.equal(a.images, b.images) and torch.equal(a.shape, b.shape)
    assert not torch.equal(a.images, c.images)


def test_full_frame_textures_are_two_colour_patterns_of_their_kind():
    rng = np.random.default_rng(1)
    for name in cue_conflict.TEXTURES:
        t = cue_conflict.TEXTURES.index(name)
        images = cue_conflict.draw(None, np.array([t] * 4), 32, rng)                 # (4, 3, 32, 32)
        for image in images:
            colours = torch.unique(image.reshape(3, -1), dim=1)
            assert colours.shape[1] == 2, name                                       # only the texture
        if name == "hstripes":                                                       # every row one colour
            assert (images == images[:, :, :, :1]).all()
        if name == "vstripes":
            assert (images == images[:, :, :1, :]).all()
    stripes = cue_conflict.texture_pattern("hstripes", 32, rng)
    assert 0.3 < stripes.mean() < 0.7


def test_silhouettes_are_flat_and_textured_shapes_are_not():
    rng = np.random.default_rng(2)
    flat = cue_conflict.draw(np.arange(4), None, 32, rng)
    textured = cue_conflict.draw(np.arange(4), np.arange(4), 32, rng)    # stripes, stripes, checker, dots

    def top_two(image):
        _, counts = torch.unique(image.reshape(3, -1), dim=1, return_counts=True)
        return counts.sort(descending=True).values[:2].tolist()       # the noisy background repeats hardly ever

    smallest = 1.299 * (0.28 * 32) ** 2 - 3 * 0.28 * 32 * 3 ** 0.5     # a triangle of the least radius, less its edge
    for image in flat:                                  # one colour fills the shape
        first, second = top_two(image)
        assert first > smallest and second < 0.05 * first
    for image in textured:                              # the shape split between two colours
        first, second = top_two(image)
        assert first + second > smallest and second > 0.2 * first


def test_shape_bias_worked_by_hand():
    pred = torch.tensor([0, 1, 2, 0])
    shape, texture = torch.tensor([0, 2, 2, 1]), torch.tensor([1, 1, 3, 3])
    # by shape: items 0 and 2; by texture: item 1; item 3 matches neither and is left out -> 2 / 3
    assert shape_bias(pred, shape, texture) == pytest.approx(
        {"shape_bias": 2 / 3, "conflict_shape_%": 50.0, "conflict_texture_%": 25.0})
    assert shape_bias(torch.tensor([3]), torch.tensor([0]), torch.tensor([1]))["shape_bias"] == 0.5


def test_class_order_maps_sorted_folders_back():
    names = cue_conflict.class_names(4)                  # circle, square, triangle, cross
    order = class_order(sorted(names), names)
    assert [names[int(k)] for k in order] == sorted(names)
    with pytest.raises(VitlabError, match="not the study's"):
        class_order(["a", "b", "c", "d"], names)


class TextureReader(nn.Module):
    """A 'model' that answers each test image's texture class (class 0 where there is none), by looking it up."""

    def __init__(self, tests, order):
        super().__init__()
        self.answers = {}
        to_output = torch.argsort(order)                 # our class -> the model's output index
        for cues in tests.values():
            for image, t in zip(cues.images, cues.texture):
                self.answers[image.numpy().tobytes()] = int(to_output[max(int(t), 0)])

    def forward(self, x):
        pixels = (x * 255).round().to(torch.uint8)
        logits = torch.zeros(len(x), 4)
        logits[torch.arange(len(x)), [self.answers[p.numpy().tobytes()] for p in pixels]] = 1.0
        return logits


def test_a_texture_only_model_has_shape_bias_zero():
    tests = held_out_sets(4, 16, 3)
    order = torch.tensor([2, 0, 3, 1])                   # a model whose outputs are in another order
    result = evaluate(TextureReader(tests, order), tests, order)
    assert result["shape_bias"] == 0.0 and result["conflict_texture_%"] == 100.0
    assert result["content"] == result["texture"] == 100.0
    assert result["shape"] == pytest.approx(25.0)         # always class 0: right on the circles only


def _seed(vit_bias, resnet_bias):
    cell = {"content": 99.0, "texture": 50.0, "shape": 60.0, "conflict_shape_%": 40.0, "conflict_texture_%": 40.0}
    return {"models": {"ViT": {"name": "v", "shape_bias": vit_bias, **cell},
                       "ResNet": {"name": "r", "shape_bias": resnet_bias, **cell}}}


def test_verdict_from_numbers_worked_by_hand():
    args = argparse.Namespace(quick=False, classes=4, img_size=32, train_per_class=300, test_per_class=100,
                              epochs=30, out="runs/study-shape-texture")
    # differences 0.2, 0.3, 0.1: mean 0.2, sd 0.1, se 0.0577 -> reproduced
    claim = summarize([_seed(0.7, 0.5), _seed(0.8, 0.5), _seed(0.6, 0.5)], args, [0, 1, 2])["claims"][0]
    assert claim["difference"] == pytest.approx(0.2) and claim["standard_error"] == pytest.approx(0.1 / 3 ** 0.5)
    assert claim["verdict"] == REPRODUCED
    claim = summarize([_seed(0.2, 0.5), _seed(0.3, 0.5)], args, [0, 1])["claims"][0]
    assert claim["verdict"] == NOT_REPRODUCED


def test_quick_study(quick_all):
    out, _ = quick_all
    out = out / "shape-texture"
    saved = json.loads((out / "shape_texture.json").read_text())
    assert saved["command"] == f"vitlab study shape-texture --quick --out {out}"
    assert [c["verdict"] for c in saved["claims"]] == [SMOKE_TEST]
    assert saved["img_size"] == 16 and len(saved["classes"]) == 4 and saved["epochs"] == 1
    run = saved["per_seed"][0]["models"]
    assert set(run) == {"ViT", "ResNet"}
    for r in run.values():
        # the trainer's val split is the content test set: the same images, so the same top-1 (class order right)
        assert r["content"] == pytest.approx(r["train_val_top1"])
        assert 0.0 <= r["shape_bias"] <= 1.0
    assert (out / "shape_texture.png").stat().st_size > 0
