"""distill --quick: two teachers and four student rows trained through vitlab.train; the distilled students
differ from the labels-only one only by DeiT's distillation token and head, and used the teacher they name."""
import json

import pytest

from vitlab.studies.distill import ROWS, STUDENT_DIM
from vitlab.studies.verdict import SMOKE_TEST


def test_quick_study(quick_all):
    out, _ = quick_all
    out = out / "distill"
    results = json.loads((out / "distill.json").read_text())
    assert (out / "distill.png").stat().st_size > 0
    assert set(results["students"]) == set(ROWS) and set(results["teachers"]) == {"CNN teacher", "ViT teacher"}
    assert [c["verdict"] for c in results["claims"]] == [SMOKE_TEST] * 3
    hard, labels = results["students"]["hard, CNN teacher"], results["students"]["labels only"]
    assert results["claims"][0]["difference"] == pytest.approx(hard["val_top1"]["mean"] - labels["val_top1"]["mean"])
    classes = 6
    assert hard["params"] - labels["params"] == STUDENT_DIM + STUDENT_DIM + (STUDENT_DIM * classes + classes)
    train = {d: json.loads((out / d / "config.json").read_text())["train"]
             for d in ("labels-seed0", "hard-cnn-seed0", "soft-cnn-seed0", "hard-vit-seed0")}
    assert train["labels-seed0"]["teacher"] is None
    hard_cnn, soft_cnn, hard_vit = train["hard-cnn-seed0"], train["soft-cnn-seed0"], train["hard-vit-seed0"]
    assert hard_cnn["teacher"] == str(out / "teacher-cnn") and hard_cnn["distill"] == "hard"
    assert soft_cnn["distill"] == "soft" and hard_vit["teacher"] == str(out / "teacher-vit")
    assert len({json.dumps(t["model_args"], sort_keys=True) for t in train.values()}) == 1      # one student
