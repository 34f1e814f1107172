"""`vitlab study distill --tiny` on a tiny ImageFolder: teacher, baseline and distilled student trained for equal
epochs; the two students differ only by DeiT's distillation token and head; the distilled run used the teacher."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from PIL import Image

from vitlab.studies import available_studies
from vitlab.studies.distill import run



def _stripes(root, per_class=24):
    """Two classes a convnet separates at once: horizontal vs vertical stripes, 8x8 RGB, random phase."""
    rng = np.random.default_rng(0)
    for label in ("horizontal", "vertical"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            rows = (np.arange(8) + rng.integers(2)) % 2 * 255
            img = np.repeat(np.repeat(rows[:, None], 8, 1)[..., None], 3, 2).astype(np.uint8)
            Image.fromarray(img if label == "horizontal" else img.transpose(1, 0, 2)).save(root / label / f"{i}.png")


def test_tiny_study(tmp_path):
    assert "distill" in available_studies()
    _stripes(tmp_path / "data")
    args = argparse.Namespace(out=str(tmp_path / "out"), data=str(tmp_path / "data"), img_size=8,
                              teacher="resnet_micro_32", patch=2, depth=1, epochs=1, teacher_epochs=None,
                              distill="soft", seed=0, seeds=2, tiny=True)
    results = run(args)
    out = tmp_path / "out"
    assert json.loads((out / "distill.json").read_text()) == json.loads(json.dumps(results))
    assert (out / "distill.png").stat().st_size > 0
    runs = results["runs"]
    assert [runs[k]["epochs"] for k in ("teacher", "baseline", "distilled")] == [1, 1, 1]
    assert all(0 <= r["val_top1"] <= 100 for r in runs.values())
    for label in ("baseline", "distilled"):                            # two seeds each, averaged
        per_seed = runs[label]["val_top1_per_seed"]
        assert runs[label]["seeds"] == [0, 1] and len(per_seed) == 2
        assert runs[label]["val_top1"] == pytest.approx(sum(per_seed) / 2)
    assert results["distilled_minus_baseline_top1"] == pytest.approx(
        runs["distilled"]["val_top1"] - runs["baseline"]["val_top1"])
    # Same student: the distilled one adds only the distillation token, its position slot and a second head.
    dim, classes = 192, 2
    assert runs["distilled"]["params"] - runs["baseline"]["params"] == dim + dim + (dim * classes + classes)
    train = {k: json.loads((out / f"{k}-seed1" / "config.json").read_text())["train"]
             for k in ("baseline", "distilled")}
    assert train["distilled"]["teacher"] == str(out / "teacher") and train["distilled"]["distill"] == "soft"
    assert train["baseline"]["teacher"] is None and train["baseline"]["seed"] == train["distilled"]["seed"] == 1
    assert train["baseline"]["model_args"] == train["distilled"]["model_args"] == {"patch_size": 2, "depth": 1}
