import argparse
import json
import math

import pytest

from vitlab.studies import _common as common
from vitlab.studies.data_efficiency import (CONVOLUTIONAL, MODELS, VIT, _fractions_arg, crossing, fraction_folder,
                                            summarize)
from vitlab.studies.verdict import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, SMOKE_TEST


def test_quick_study_trains_every_model_at_every_fraction_for_the_same_steps(quick_all):
    out, _ = quick_all
    saved = json.loads((out / "data-efficiency" / "data_efficiency.json").read_text())
    assert (out / "data-efficiency" / "data_efficiency.png").is_file()
    assert saved["command"] == f"vitlab study data-efficiency --quick --out {out / 'data-efficiency'}"
    assert saved["fractions"] == [0.5, 1.0] and saved["distinct_images_per_class"] == {"0.5": 3, "1": 6}
    assert [c["verdict"] for c in saved["claims"]] == [SMOKE_TEST] * 6
    assert set(saved["params"]) == set(MODELS) and all(p > 100_000 for p in saved["params"].values())
    assert saved["steps"] == {label: [1] for label in MODELS}       # 36 images, batch 32: one step per run
    assert [row["fraction"] for row in saved["table"]] == ["0.5", "1"]


def test_fraction_folder_keeps_nested_subsets_cycled_to_the_full_size(tmp_path):
    full = tmp_path / "full"
    common.shapes_folder(full, 8, per_class=6, val_per_class=2)
    half, distinct = fraction_folder(full, 0.5, tmp_path / "half")
    third, distinct_third = fraction_folder(full, 0.34, tmp_path / "third")
    assert (distinct, distinct_third) == (3, 2)                     # round(0.5 * 6), round(0.34 * 6)
    for class_dir in sorted((full / "train").iterdir()):
        originals = [p.read_bytes() for p in sorted(class_dir.glob("*.png"))]
        cycled = [p.read_bytes() for p in sorted((tmp_path / "half" / "train" / class_dir.name).glob("*.png"))]
        assert cycled == originals[:3] * 2                          # as many files as the full set: equal steps
        small = {p.read_bytes() for p in (tmp_path / "third" / "train" / class_dir.name).glob("*.png")}
        assert small == set(originals[:2]) and small < set(cycled)  # nested: the smaller subset is in the larger
    val = sorted(p.relative_to(full / "val") for p in (full / "val").rglob("*.png"))
    assert val and sorted(p.relative_to(tmp_path / "half" / "val")
                          for p in (tmp_path / "half" / "val").rglob("*.png")) == val
    assert fraction_folder(full, 0.5, tmp_path / "half") == (half, 3)   # kept when present


def test_crossing_is_interpolated_in_log_fraction():
    assert crossing([0.1, 1.0], [10.0, -10.0]) == pytest.approx(math.sqrt(0.1))   # halfway in log = geometric mean
    assert crossing([0.1, 0.5, 1.0], [6.0, 2.0, -2.0]) == pytest.approx(math.exp(0.5 * math.log(0.5)))
    assert crossing([0.1, 1.0], [0.0, 3.0]) == 0.1
    assert crossing([0.1, 0.5, 1.0], [5.0, 2.0, 1.0]) is None                        # the gap shrinks, no cross


# the non-quick arguments the summarize tests share (three seeds, fractions 0.1 and 1)
ARGS = argparse.Namespace(quick=False, train_per_class=10, val_per_class=5, epochs=2, lr=1e-3, fractions=(0.1, 1.0),
                          seeds=3, seed=0, out="runs/study-data-efficiency")


def _runs(top1: dict[float, dict[str, list[float]]]):
    return {f: {label: [{"val_top1": v, "params": 1000, "steps": 10, "chance_top1": 16.67, "wall_time_s": 1.0}
                        for v in values] for label, values in models.items()} for f, models in top1.items()}


def test_verdicts_come_from_paired_seeds():
    top1 = {0.1: {"ViT": [20.0, 22.0, 24.0], "ResNet": [40.0, 41.0, 45.0], "CvT": [30.0, 33.0, 33.0],
                  "hybrid R8+ViT": [15.0, 18.0, 20.0]},
            1.0: {"ViT": [60.0, 62.0, 64.0], "ResNet": [65.0, 66.0, 70.0], "CvT": [71.0, 74.0, 75.0],
                  "hybrid R8+ViT": [61.0, 62.0, 66.0]}}
    results = summarize(_runs(top1), {0.1: 1, 1.0: 10}, ARGS, [0, 1, 2], 32)
    beats = {c["model"]: c["verdict"] for c in results["claims"] if " beats " in c["statement"]}
    assert beats == {"ResNet": REPRODUCED,                          # +20, +19, +21 points
                     "CvT": REPRODUCED,                             # +10, +11, +9
                     "hybrid R8+ViT": NOT_REPRODUCED}               # -5, -4, -4
    gaps = {c["model"]: c for c in results["claims"] if "shrinks" in c["statement"]}
    assert gaps["ResNet"]["verdict"] == REPRODUCED and gaps["ResNet"]["difference"] == pytest.approx(20 - 5)
    assert gaps["CvT"]["verdict"] == NOT_REPRODUCED                # +10 -> +11.3: it grows
    assert gaps["hybrid R8+ViT"]["verdict"] == NOT_REPRODUCED      # -4.3 -> +1: grows through zero
    assert results["crossings"]["ResNet"] is None and results["crossings"]["CvT"] is None
    assert results["crossings"]["hybrid R8+ViT"] == pytest.approx(math.exp(math.log(0.1) * (1 - 13 / 16)))
    assert [c["verdict"] for c in summarize(_runs({f: {k: v[:1] for k, v in m.items()} for f, m in top1.items()}),
                                            {0.1: 1, 1.0: 10}, ARGS, [0], 32)["claims"]] == [INCONCLUSIVE] * 6
    assert results["command"] == ("vitlab study data-efficiency --fractions 0.1,1.0 --train-per-class 10 "
                                  "--val-per-class 5 --epochs 2")
    assert len(results["table"]) == 2 and set(CONVOLUTIONAL) | {VIT} == set(MODELS)


@pytest.mark.parametrize("text", ["0,1", "0.5", "1.5,1", "0.5,0.5", "x", ""])
def test_bad_fractions_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError, match="--fractions"):
        _fractions_arg(text)


def test_fractions_are_sorted():
    assert _fractions_arg("1,0.1,0.5") == (0.1, 0.5, 1.0)


def test_no_verdict_when_the_vit_learned_nothing():
    top1 = {0.1: {"ViT": [16.0, 17.0, 16.5], "ResNet": [40.0, 41.0, 45.0], "CvT": [30.0, 33.0, 33.0],
                  "hybrid R8+ViT": [35.0, 38.0, 40.0]},
            1.0: {"ViT": [16.0, 17.5, 16.0], "ResNet": [65.0, 66.0, 70.0], "CvT": [70.0, 73.0, 73.0],
                  "hybrid R8+ViT": [61.0, 62.0, 66.0]}}
    results = summarize(_runs(top1), {0.1: 1, 1.0: 10}, ARGS, [0, 1, 2], 32)
    assert results["vit_above_chance_at_largest"] is False               # 16.5 vs chance 16.67
    assert [c["verdict"] for c in results["claims"]] == [INCONCLUSIVE] * 6
    assert all("not above chance" in c["guard"] for c in results["claims"])
