"""Segmentation end to end: run_training on a tiny U-Net learns (the loss falls), metrics.json keeps the contract,
the report figure is written; predict writes the palette mask and the overlay; eval prints the metrics."""
import csv
import json

import numpy as np
import pytest
from PIL import Image

from vitlab.cli import main
from vitlab.tasks import task_for_model
from vitlab.train import TrainConfig
from vitlab.train.run import run_training

CONTRACT = ("val_miou", "val_dice", "val_pixel_acc", "val_iou_per_class", "skipped_images")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("seg") / "run"
    task = task_for_model("unet_small_64")
    assert task.name == "segmentation"
    from vitlab.data import segmentation

    # a small scenes set (the builder's counts are keyword defaults of the task's data call)
    original = segmentation.build_segmentation_data

    def small(spec, size, **kw):
        return original(spec, size, **kw, scenes_train=192, scenes_val=32)

    segmentation.build_segmentation_data = small
    try:
        metrics = run_training(TrainConfig(model="unet_small_64", data="scenes", img_size=32, epochs=4,
                                           batch_size=16, lr=1e-2, warmup_epochs=0, out=str(out),
                                           model_args={"widths": [8, 16]}))
    finally:
        segmentation.build_segmentation_data = original
    return out, metrics


def test_training_learns_and_writes_the_contract(run_dir):
    out, metrics = run_dir
    saved = json.loads((out / "metrics.json").read_text())
    assert all(k in saved for k in CONTRACT) and saved["primary_metric"] == "val_miou"
    assert set(saved["val_iou_per_class"]) == {"background", "circle", "square", "triangle", "cross", "ring", "star"}
    assert "val_hd95" not in saved
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    losses = [float(r["train_loss"]) for r in rows]
    assert losses[-1] < 0.8 * losses[0] and "train_dice" in rows[0] and "train_ce" in rows[0]
    assert saved["val_pixel_acc"] > 0.5
    assert (out / "segmentation.png").stat().st_size > 1000


def test_predict_writes_palette_mask_and_overlay(run_dir, tmp_path, capsys):
    out, _ = run_dir
    img = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(img)
    assert main(["predict", "--checkpoint", str(out), str(img), "--out", str(tmp_path / "p")]) == 0
    mask = Image.open(tmp_path / "p" / "x_mask.png")
    assert mask.mode == "P" and mask.size == (48, 40) and np.asarray(mask).max() < 7
    assert Image.open(tmp_path / "p" / "x_overlay.png").size == (48, 40)
    assert "x_mask.png" in capsys.readouterr().out
    # two inputs of one name in different folders: both written, the second as x_2_*
    (tmp_path / "b").mkdir()
    Image.fromarray(np.zeros((40, 48, 3), dtype=np.uint8)).save(tmp_path / "b" / "x.png")
    assert main(["predict", "--checkpoint", str(out), str(img), str(tmp_path / "b" / "x.png"),
                 "--out", str(tmp_path / "q")]) == 0
    assert sorted(f.name for f in (tmp_path / "q").iterdir()) == ["x_2_mask.png", "x_2_overlay.png", "x_mask.png",
                                                                  "x_overlay.png"]


def test_eval_prints_the_metrics(run_dir, capsys):
    out, _ = run_dir
    assert main(["eval", "--checkpoint", str(out), "--data", "scenes", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "val_miou" in printed and "val_dice" in printed and "IoU per class: background" in printed


def test_volumes_train_with_a_3d_model_and_report_hd95(tmp_path, monkeypatch):
    from vitlab.data import segmentation

    original = segmentation.build_segmentation_data
    monkeypatch.setattr(segmentation, "build_segmentation_data",
                        lambda spec, size, **kw: original(spec, size, **kw, volumes_train=16, volumes_val=4))
    metrics = run_training(TrainConfig(model="unet3d_small_32", data="volumes", img_size=16, epochs=1,
                                       batch_size=8, out=str(tmp_path / "r"), model_args={"widths": [4, 8]}))
    saved = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert all(k in saved for k in (*CONTRACT, "val_hd95")) and saved["spatial_dims"] == 3
    assert set(saved["val_iou_per_class"]) == {"background", "ellipsoid", "box", "tube"}
    assert metrics["val_miou"] == saved["val_miou"]
    # predict on a volume larger than the training side: sliding windows, a .npy mask and a slice montage
    volume = np.random.default_rng(0).integers(0, 255, (20, 24, 24)).astype(np.float32)
    np.save(tmp_path / "case.npy", volume)
    assert main(["predict", "--checkpoint", str(tmp_path / "r"), str(tmp_path / "case.npy"),
                 "--out", str(tmp_path / "p")]) == 0
    mask = np.load(tmp_path / "p" / "case_mask.npy")
    assert mask.shape == (20, 24, 24) and mask.max() < 4
    assert Image.open(tmp_path / "p" / "case_montage.png").width > 24 * 8


def test_loss_weights_reach_the_objective_and_other_tasks_refuse_them(capsys):
    """--ce-weight / --dice-weight: the trained loss is their weighted sum; a classifier refuses them in one line;
    both at 0 is refused (nothing would train)."""
    import torch

    from vitlab.tasks.segmentation.loss import SegmentationLoss
    from vitlab.train.run import TrainConfig as Cfg

    task = task_for_model("unet_small_64")
    model = __import__("vitlab").create_model("unet_small_64", widths=[4, 8], img_size=16)
    objective = task.objective(Cfg(model="unet_small_64", ce_weight=0.25, dice_weight=2.0), model,
                               torch.device("cpu"))
    x, y = torch.randn(2, 3, 16, 16), torch.randint(0, 4, (2, 16, 16))
    total, parts = objective(model, x, y)
    torch.testing.assert_close(total, 0.25 * parts["ce"] + 2.0 * parts["dice"])
    out = model(x)
    logits = out["logits"] if isinstance(out, dict) else out
    torch.testing.assert_close(parts["ce"], SegmentationLoss()(logits, y)[1]["ce"])
    assert main(["train", "--model", "vit_micro_patch2_8", "--dice-weight", "2", "--out", "/nonexistent/x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["vitlab train: error: --dice-weight: segmentation-only; "
                   "vit_micro_patch2_8 is a classification model"]
    assert main(["train", "--model", "unet_small_64", "--ce-weight", "0", "--dice-weight", "0",
                 "--out", "/nonexistent/x"]) == 2
    assert "both 0" in capsys.readouterr().err
