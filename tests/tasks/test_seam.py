"""The task seam: models declare their task, run_training and the CLI follow it, resume accepts the run's own
values, and the objective's named loss parts reach metrics.csv."""
import csv
import json

import pytest
import torch

from vitlab.cli import main
from vitlab.errors import VitlabError
from vitlab.registry import default_config, model_task
from vitlab.tasks import get_task, task_for_model
from vitlab.train import TrainConfig
from vitlab.train.run import resolve_model_name
from vitlab.train.trainer import to_device


def test_models_declare_their_task():
    assert model_task("vit_tiny_patch16_224") == "classification"
    assert task_for_model("resnet18").primary_metric == "val_top1"
    with pytest.raises(VitlabError, match="unknown model 'nope'"):
        model_task("nope")
    with pytest.raises(VitlabError, match="unknown task 'segmentationz'"):
        get_task("segmentationz")


def test_default_config_reads_the_variant_without_building_weights():
    cfg = default_config("vit_base_patch16_224")
    assert cfg["img_size"] == 224 and cfg["dim"] == 768 and "drop_path_rate" in cfg
    assert default_config("vit_base_patch16_224", img_size=384)["img_size"] == 384


def test_explicit_default_model_is_kept_with_a_checkpoint(tmp_path):
    # an explicit --model equal to the main job's model is no longer taken for "not given"
    assert resolve_model_name(TrainConfig(model="vit_micro_patch2_8")).model == "vit_micro_patch2_8"
    assert resolve_model_name(TrainConfig()).model == "vit_micro_patch2_8"


def test_to_device_moves_nested_targets():
    targets = [{"boxes": torch.zeros(2, 4), "labels": torch.tensor([1, 2]), "name": "a"}]
    moved = to_device(targets, torch.device("meta"))
    assert moved[0]["boxes"].device.type == "meta" and moved[0]["name"] == "a"


def _train(tmp_path, *extra):
    return main(["train", "--data", "digits", "--epochs", "3", "--stop-at", "1", "--seed", "7", "--img-size", "8",
                 "--batch-size", "256", "--out", str(tmp_path / "B"), *extra])


def test_resume_with_the_original_command_and_a_real_change(tmp_path, capsys):
    assert _train(tmp_path) == 0
    capsys.readouterr()
    # the same command again plus --resume: nothing changed, so it continues
    assert _train(tmp_path, "--resume", str(tmp_path / "B"), "--stop-at", "2") == 0
    assert json.loads((tmp_path / "B" / "metrics.json").read_text())["epochs"] == 2
    capsys.readouterr()
    code = main(["train", "--data", "digits", "--seed", "8", "--resume", str(tmp_path / "B")])
    err = capsys.readouterr().err
    assert code == 2 and "--seed 7 -> 8" in err and err.count("\n") == 1
    # metrics.csv has the objective's named part as a column
    rows = list(csv.DictReader((tmp_path / "B" / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"] and "train_ce" in rows[0]
    assert abs(float(rows[0]["train_ce"]) - float(rows[0]["train_loss"])) < 1e-6
