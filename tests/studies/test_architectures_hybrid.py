"""architectures and hybrid: the "no clear winner" rule against hand-computed cases, interleaved throughput
ratios, the budget -> schedule rule, and the quick runs' JSON checked against the runs they trained."""
import argparse
import json
import math

import pytest

from vitlab.cli import main
from vitlab.registry import create_model
from vitlab.studies import _families as families
from vitlab.studies.architectures import MODELS as FAMILIES
from vitlab.studies.hybrid import HYBRID, MODELS, SCHEDULE_MARGIN, VIT, _budgets_arg, budget_epochs
from vitlab.studies.verdict import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, SMOKE_TEST


def test_a_clear_winner_does_not_reproduce_no_winner():
    top1 = {"A": [90.0, 93.0, 91.0], "B": [70.0, 71.0, 75.0], "C": [30.0, 30.0, 31.0]}
    r = families.no_clear_winner(top1, chance=16.7, quick=False)
    diffs = [20.0, 22.0, 16.0]                                       # A - B per seed: mean 19.33, sd 3.055
    assert (r["best"], r["runner_up"]) == ("A", "B") and r["verdict"] == NOT_REPRODUCED
    assert r["difference"] == pytest.approx(sum(diffs) / 3)
    assert r["standard_error"] == pytest.approx(math.sqrt((56 / 3) / 2) / math.sqrt(3))   # squares 4/9+64/9+100/9
    # the same gaps 30 points lower: the runner-up is below the floor (58.3% for 6 classes), nothing is ranked
    low = families.no_clear_winner({k: [v - 30 for v in vs] for k, vs in top1.items()}, chance=100 / 6, quick=False)
    assert low["verdict"] == INCONCLUSIVE and low["undertrained"].endswith("B 42.0%")


def test_top_two_within_two_se_reproduce_no_winner():
    top1 = {"A": [80.0, 86.0, 77.0], "B": [81.0, 83.0, 76.0], "C": [20.0, 22.0, 21.0]}   # A - B: -1, 3, 1
    r = families.no_clear_winner(top1, chance=16.7, quick=False)
    assert (r["best"], r["runner_up"]) == ("A", "B") and r["best_above_chance"]
    assert r["difference"] == pytest.approx(1.0) and r["standard_error"] == pytest.approx(2 / math.sqrt(3))
    assert r["verdict"] == REPRODUCED


def test_nothing_learned_or_one_seed_is_inconclusive_and_quick_has_no_verdict():
    at_chance = {"A": [17.0, 16.0, 18.0], "B": [16.0, 17.5, 16.0]}
    assert families.no_clear_winner(at_chance, chance=16.7, quick=False)["verdict"] == INCONCLUSIVE
    one_seed = {"A": [60.0], "B": [20.0]}
    assert families.no_clear_winner(one_seed, chance=16.7, quick=False)["verdict"] == INCONCLUSIVE
    assert families.no_clear_winner(one_seed, chance=16.7, quick=True)["verdict"] == SMOKE_TEST


def test_throughput_is_relative_to_the_reference_round_by_round():
    models = {"micro": "vit_micro_patch4_32", "small": "vit_small_patch4_32"}     # dim 384: several times the FLOPs
    speed = families.throughput(models, img_size=16, batch=4, rounds=2, repeats=2, reference="micro")
    assert speed["micro"]["ratio"] == [1.0, 1.0]
    assert all(v > 0 for m in speed.values() for v in m["images_per_s"])
    assert speed["small"]["ratio"] == pytest.approx([s / m for s, m in zip(speed["small"]["images_per_s"],
                                                                             speed["micro"]["images_per_s"])])
    assert max(speed["small"]["ratio"]) < 1.0


def test_train_seconds_sums_the_training_loop_of_every_epoch(tmp_path):
    (tmp_path / "metrics.csv").write_text("epoch,train_loss,val_top1,epoch_time_s\n1,1.7,20,2.5\n2,1.5,30,2.25\n")
    assert families.train_seconds(tmp_path) == pytest.approx(4.75)


def test_schedules_outlast_their_budgets_and_bad_budgets_are_refused(tmp_path, capsys):
    # ceil(1.1 * budget / 3.5 s an epoch): 0.31, 3.14, 6.29, 12.6 -> the time limit, not the schedule, ends a run
    assert SCHEDULE_MARGIN == 1.1 and [budget_epochs(b, 3.5) for b in (1.0, 10.0, 20.0, 40.0)] == [1, 4, 7, 13]
    assert all(budget_epochs(b, e) * e >= SCHEDULE_MARGIN * b for b in (5.0, 12.0, 48.0) for e in (0.7, 3.5, 30.0))
    assert _budgets_arg("40,10,20") == (10.0, 20.0, 40.0)
    for bad in ("0,10", "10,10", "10,inf", "nan", "ten", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            _budgets_arg(bad)
    with pytest.raises(SystemExit) as e:
        main(["study", "hybrid", "--budgets", "5,-1", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--budgets" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_architectures_quick(quick_all):
    out, _ = quick_all
    out = out / "architectures"
    saved = json.loads((out / "architectures.json").read_text())
    assert (out / "architectures.png").stat().st_size > 0
    models = saved["models"]
    assert set(models) == set(FAMILIES) and saved["claims"][0]["verdict"] == SMOKE_TEST
    assert models["ViT / DeiT"]["images_per_s_vs_vit"]["per_seed"] == [1.0]
    means = {label: m["val_top1"]["mean"] for label, m in models.items()}
    c = saved["claims"][0]
    assert means[c["best"]] == max(means.values())
    assert c["difference"] == pytest.approx(means[c["best"]] - means[c["runner_up"]])
    assert [row["model"] for row in saved["table"]] == sorted(means, key=lambda k: -means[k])
    for label, m in models.items():                                  # same epochs; params of the model trained
        run = json.loads((out / f"{families._slug(label)}-seed0" / "metrics.json").read_text())
        assert run["epochs"] == m["epochs"] == 1 and run["val_top1"] == m["val_top1"]["mean"]
        model = create_model(m["name"], num_classes=6, img_size=saved["img_size"])
        assert m["params"] == sum(p.numel() for p in model.parameters())


def test_hybrid_quick(quick_all):
    out, _ = quick_all
    out = out / "hybrid"
    saved = json.loads((out / "hybrid.json").read_text())
    assert (out / "hybrid.png").stat().st_size > 0
    assert saved["budgets_s"] == [1.0, 2.0] and saved["claims"][0]["verdict"] == SMOKE_TEST
    smallest = {label: pts[0] for label, pts in saved["points"].items()}
    assert saved["claims"][0]["difference"] == pytest.approx(
        smallest[HYBRID]["val_top1"]["mean"] - smallest[VIT]["val_top1"]["mean"])
    assert saved["params"][HYBRID] > saved["params"][VIT]                  # the ResNet stem adds weights
    seconds = {}
    for label in MODELS:
        for point in saved["points"][label]:
            run_dir = out / f"{families._slug(label)}-{point['budget_s']:g}s-seed0"
            seconds[label, point["budget_s"]] = families.train_seconds(run_dir)
            assert point["train_time_s"]["mean"] == pytest.approx(seconds[label, point["budget_s"]])
            run = json.loads((run_dir / "metrics.json").read_text())
            assert run["time_limit_s"] == point["budget_s"]                    # each run was given its budget
            assert point["epochs"] == 1 and point["epochs_run"] == [run["epochs"]] == [1]
            assert point["steps"] == [run["steps"]] and point["stopped_at_budget"] == [run["stopped_at_time_limit"]]
    assert [r["budget_s"] for r in saved["time_ratio"]] == saved["budgets_s"]
    for r in saved["time_ratio"]:                                          # actual hybrid / ViT seconds, per seed
        assert r["hybrid_over_vit"]["per_seed"] == pytest.approx(
            [seconds[HYBRID, r["budget_s"]] / seconds[VIT, r["budget_s"]]], rel=1e-4)
