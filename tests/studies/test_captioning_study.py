"""`vitlab study captioning`: the quick mode runs the 2x2 + the lambda-0 row end to end (five trainings, JSON,
figure, no verdict);
the verdicts are computed from the per-seed numbers, paired over seeds, and a seed whose captions name no object
is left out of its grounding claim."""
from __future__ import annotations

import argparse
import json

import pytest

from vitlab.cli import main
from vitlab.studies import captioning as study
from vitlab.studies.verdict import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, SMOKE_TEST


def test_quick_mode_trains_the_five_models_and_gives_no_verdict(tmp_path):
    out = tmp_path / "study"
    assert main(["study", "captioning", "--quick", "--out", str(out)]) == 0
    results = json.loads((out / "captioning.json").read_text())
    assert set(results["table"]) == set(study.MODELS) and results["quick"] is True
    assert {r["model"] for r in results["table"].values()} == {m for m, _, _ in study.MODELS.values()}
    assert len(results["claims"]) == 8 and {c["verdict"] for c in results["claims"]} == {SMOKE_TEST}
    assert results["command"] == f"vitlab study captioning --quick --out {out}"
    assert all(0.0 <= r["val_bleu4_mean"] <= 1.0 for r in results["table"].values())
    assert (out / "captioning.png").stat().st_size > 10_000


def _run(bleu, grounding, uniform):
    return [{"seed": s, "val_bleu4": b, "val_cider": 2 * b, "val_grounding": g, "val_grounding_uniform": u,
             "params": 10, "train_time_s": 1.0} for s, (b, g, u) in enumerate(zip(bleu, grounding, uniform))]


def test_verdicts_are_paired_over_seeds_by_hand():
    args = argparse.Namespace(quick=False, epochs=8, data="scenes:3000,200", batch_size=32, lr=2e-3, seeds=3,
                              seed=0, out="runs/study-captioning")
    runs = {"ViT + transformer": _run([0.50, 0.40, 0.60], [0.30, 0.32, 0.31], [0.05, 0.05, 0.05]),
            "ViT + LSTM": _run([0.30, 0.21, 0.41], [0.02, 0.03, 0.02], [0.05, 0.05, 0.06]),
            "ResNet + transformer": _run([0.30, 0.20, 0.40], [0.10, None, 0.50], [0.05, 0.05, 0.05]),
            "ResNet + LSTM": _run([0.50, 0.40, 0.60], [None, None, None], [None, None, None])}
    results = study.summarize(runs, args, [0, 1, 2])
    claims = {c["statement"].split(":")[0]: c for c in results["claims"]}
    # ViT: differences 0.20, 0.19, 0.19 - unpaired the spread (0.1) would hide them; paired: se 0.0033
    vit = claims["ViT encoder"]
    assert vit["verdict"] == REPRODUCED and vit["paired"] and vit["difference"] == pytest.approx(0.19333, abs=1e-4)
    assert claims["ResNet encoder"]["verdict"] == NOT_REPRODUCED        # 0.2 below on every seed
    assert claims["ViT + transformer"]["verdict"] == REPRODUCED
    assert claims["ViT + LSTM"]["verdict"] == NOT_REPRODUCED            # less than uniform: not grounded
    resnet = claims["ResNet + transformer"]                              # seed 1 named no object: left out
    assert resnet["n"] == [2, 2] and "left out" in resnet["note"] and resnet["verdict"] == INCONCLUSIVE
    assert claims["ResNet + LSTM"]["verdict"] == INCONCLUSIVE and claims["ResNet + LSTM"]["n"] == [0, 0]
    row = results["table"]["ViT + transformer"]
    assert row["val_bleu4"] == "0.500 ± 0.100" and row["val_grounding_per_seed"] == [0.30, 0.32, 0.31]
    assert results["table"]["ResNet + LSTM"]["val_grounding"].startswith("n/a")
    assert results["command"] == "vitlab study captioning --seeds 3"


def test_bad_data_spec_is_one_line(tmp_path, capsys):
    assert main(["study", "captioning", "--data", "scenes:x", "--epochs", "1", "--seeds", "1",
                 "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "scenes:N,M" in err[0], err


def test_lambda_zero_row_is_compared_with_eq14_paired():
    args = argparse.Namespace(quick=False, epochs=8, data="scenes:3000,200", batch_size=32, lr=2e-3, seeds=2,
                              seed=0, out="runs/study-captioning")
    same = _run([0.3, 0.3], [0.1, 0.1], [0.05, 0.05])
    runs = {"ViT + transformer": same, "ViT + LSTM": same, "ResNet + transformer": same,
            "ResNet + LSTM": _run([0.60, 0.62], [0.05, 0.06], [0.05, 0.05]),
            "ResNet + LSTM, λ 0": _run([0.50, 0.53], [0.55, 0.57], [0.05, 0.05])}
    results = study.summarize(runs, args, [0, 1])
    claim = next(c for c in results["claims"] if "doubly stochastic" in c["statement"])
    # lambda 1 - lambda 0 per seed: 0.10, 0.09 -> mean 0.095, se 0.005: reproduced
    assert claim["verdict"] == REPRODUCED and claim["paired"]
    assert claim["difference"] == pytest.approx(0.095, abs=1e-9)
    assert results["table"]["ResNet + LSTM, λ 0"]["model_args"] == {"doubly_stochastic": 0.0}
    assert results["table"]["ResNet + LSTM"]["model_args"] == {}
    grounded = {c["statement"].split(":")[0]: c["verdict"] for c in results["claims"]}
    assert grounded["ResNet + LSTM, λ 0"] == REPRODUCED
