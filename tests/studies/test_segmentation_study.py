"""`vitlab study segmentation --quick`: the four models train on the same data, the JSON and the plot are written,
and quick mode gives no verdict."""
import argparse
import json

from vitlab.studies import available_studies
from vitlab.studies.segmentation import MODELS, epochs_for_budget
from vitlab.studies.verdict import SMOKE_TEST


def test_quick_study_runs_all_four_and_gives_no_verdict(tmp_path):
    study = available_studies()["segmentation"]
    args = argparse.Namespace(out=str(tmp_path), data="scenes", budget=1.0, seeds=3, seed=0, batch_size=8,
                              lr=1e-3, quick=True)
    results = study.run(args)
    saved = json.loads((tmp_path / "segmentation.json").read_text())
    assert set(saved["table"]) == set(MODELS)
    assert saved["claim"]["verdict"] == SMOKE_TEST and results["quick"] is True
    for row in saved["table"].values():
        assert 0.0 <= row["val_miou_mean"] <= 1.0 and row["params"] > 0
    assert (tmp_path / "segmentation.png").stat().st_size > 10_000


def test_budget_gives_a_slow_model_fewer_epochs():
    fast = epochs_for_budget("setr_naive_small_64", 60.0, 8, "scenes")
    assert fast >= 1
    assert epochs_for_budget("setr_naive_small_64", 600.0, 8, "scenes") > fast
