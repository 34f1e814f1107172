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


def test_a_teacher_near_chance_makes_the_distillation_claims_inconclusive():
    import argparse

    from vitlab.studies.distill import add_arguments, summarize
    from vitlab.studies.verdict import INCONCLUSIVE, REPRODUCED

    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args([])
    args.out = "runs/study-distill"

    def teacher(top1):
        return {"model": "m", "epochs": 30, "val_top1": top1, "params": 1, "num_classes": 6}

    def runs(values):
        return [{"val_top1": v, "model": "s", "params": 2, "epochs": 15} for v in values]

    students = {"labels only": runs([40, 41, 42]), "hard, CNN teacher": runs([60, 62, 61]),
                "soft, CNN teacher": runs([50, 52, 51]), "hard, ViT teacher": runs([45, 46, 44])}
    good = summarize({"CNN teacher": teacher(90.0), "ViT teacher": teacher(85.0)}, students, args, [0, 1, 2])
    assert [c["verdict"] for c in good["claims"]] == [REPRODUCED] * 3
    weak = summarize({"CNN teacher": teacher(27.7), "ViT teacher": teacher(85.0)}, students, args, [0, 1, 2])
    assert [c["verdict"] for c in weak["claims"]] == [INCONCLUSIVE] * 3
    assert weak["claims"][0]["undertrained"].endswith("CNN teacher 27.7%")
    assert weak["claims"][0]["difference"] == good["claims"][0]["difference"] == 20.0
