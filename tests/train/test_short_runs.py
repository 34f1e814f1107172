"""Short runs: warm-up capped to a fifth of the run, the README recipe learns, a run at chance says so, progress
is reported (logging from Python, a line at a steady interval off a terminal), bad settings are refused first."""
import io
import json
import logging
import math

import pytest
import torch
from PIL import Image

from vitlab.data.imagefolder import source_sizes
from vitlab.errors import VitlabError
from vitlab.tasks.classification import TASK, chance_level
from vitlab.train import TrainConfig, run_training
from vitlab.train.run import warmup_steps


def test_warmup_is_capped_at_a_fifth_of_the_run(caplog):
    with caplog.at_level(logging.INFO, logger="vitlab.train.run"):
        assert warmup_steps(TrainConfig(epochs=5, warmup_epochs=5), steps_per_epoch=100) == 100   # 1 epoch
    assert "warm-up capped at 1 epochs (20% of 5; --warmup-epochs 5)" in caplog.text
    assert warmup_steps(TrainConfig(epochs=100, warmup_epochs=5), steps_per_epoch=100) == 500       # untouched
    assert warmup_steps(TrainConfig(epochs=3, warmup_epochs=0.5), steps_per_epoch=10) == 5
    assert warmup_steps(TrainConfig(epochs=2, warmup_epochs=0), steps_per_epoch=10) == 0


@pytest.mark.parametrize("field,value,message", [
    ("batch_size", 0, "--batch-size must be at least 1, got 0"),
    ("batch_size", -4, "--batch-size must be at least 1, got -4"),
    ("batch_size", 2.5, "--batch-size must be an integer, got 2.5"),
    ("epochs", 0, "--epochs must be at least 1, got 0"),
    ("epochs", "5", "--epochs must be an integer, got '5'"),
    ("lr", -1.0, "--lr must be above 0, got -1"),
    ("lr", math.nan, "--lr must be a finite number, got nan"),
    ("warmup_epochs", math.inf, "--warmup-epochs must be a finite number, got inf"),
    ("label_smoothing", 1.0, "--label-smoothing must be below 1, got 1"),
    ("val_fraction", 0.0, "--val-fraction must be above 0, got 0"),
    ("precision", "fp8", "--precision must be one of fp32, bf16, fp16, auto, got 'fp8'"),
    ("device", "gpu", "--device must be auto, cpu, cuda, cuda:N or mps, got 'gpu'"),
    ("distill", "medium", "--distill must be one of hard, soft, got 'medium'"),
    ("data", "", "--data must be a non-empty string, got ''"),
    ("compile", "yes", "--compile must be true or false, got 'yes'"),
])
def test_validate_names_the_option(tmp_path, field, value, message):
    cfg = TrainConfig(out=str(tmp_path / "run"), **{field: value})
    with pytest.raises(VitlabError) as e:
        cfg.validate()
    assert str(e.value) == message
    with pytest.raises(VitlabError, match="^" + message.split(",")[0]):
        run_training(cfg)                            # the first thing run_training does: nothing written
    assert not (tmp_path / "run").exists()
    assert TrainConfig().validate() == TrainConfig()


def test_a_one_class_folder_is_refused(tmp_path):
    (tmp_path / "data" / "cat").mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (10, 10), (i * 40, 0, 0)).save(tmp_path / "data" / "cat" / f"{i}.png")
    with pytest.raises(VitlabError, match=r"needs at least 2 classes, found 1 \(cat\)"):
        run_training(TrainConfig(data=str(tmp_path / "data"), out=str(tmp_path / "run"), epochs=1))


def test_chance_level_by_hand():
    confusion = torch.tensor([[50, 0, 0], [30, 0, 0], [20, 0, 0]])     # always "class 0": 50 of 100 images
    chance, margin = chance_level(confusion)
    assert chance == pytest.approx(50.0)
    assert margin == pytest.approx(300 * (0.5 * 0.5 / 100) ** 0.5)  # 3 binomial std = 15 points
    balanced = torch.diag(torch.full((6,), 125))                      # 750 images, 6 classes
    chance, margin = chance_level(balanced)
    assert chance == pytest.approx(100 / 6)
    assert 300 * ((1 / 6) * (5 / 6) / 750) ** 0.5 < 5 and margin == 5.0    # 3 std = 4.1 points: the floor, 5


def _result(top1, classes=6, per_class=125):
    confusion = torch.diag(torch.full((classes,), per_class))
    return {"val_top1": top1, "val_top5": 90.0, "val_loss": 1.7, "confusion": confusion,
            "val_topk": min(5, classes)}


class _Data:
    classes = list("abcdef")
    references = None


def test_a_run_at_chance_says_so():
    m = {**TASK.final_metrics(_result(16.8), _Data()), "epochs": 5}
    assert m["near_chance"] is True and m["chance_top1"] == pytest.approx(16.67) and m["num_classes"] == 6
    assert TASK.summary(m).endswith("; val top-1 17% is chance level for 6 classes; train longer: --epochs 30")
    good = {**TASK.final_metrics(_result(60.0), _Data()), "epochs": 5}
    assert good["near_chance"] is False and "chance" not in TASK.summary(good)


def test_top_k_is_shown_only_below_the_class_count():
    three = _result(50.0, classes=3)
    assert TASK.epoch_line(three) == "val top-1 50.00%"
    assert "top-5" not in TASK.summary({**three, "num_classes": 3})
    six = _result(50.0, classes=6)
    assert TASK.epoch_line(six) == "val top-1 50.00%  top-5 90.00%"
    assert "top-5 90.00%" in TASK.summary({**six, "num_classes": 6})


def test_loss_note_names_what_raises_the_training_loss():
    import vitlab

    model = vitlab.create_model("vit_micro_patch2_8", drop_path_rate=0.1)
    note = TASK.loss_note(TrainConfig(), model, type("D", (), {"mirror_safe": True})())
    assert note.startswith("Train loss is above val loss by design: label smoothing 0.1, augmentation (crop, flip), "
                           "drop path 0.1 act in training only")
    plain = vitlab.create_model("vit_micro_patch2_8", drop_path_rate=0.0)
    cfg = TrainConfig(label_smoothing=0.0, crop_scale=1.0, hflip=False)
    assert TASK.loss_note(cfg, plain, type("D", (), {"mirror_safe": True})()) is None


def test_curves_figure_carries_the_note(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from vitlab.train.report import plot_curves

    written = []
    original = Figure.text
    monkeypatch.setattr(Figure, "text", lambda self, x, y, s, *a, **k: written.append(s) or original(self, x, y, s,
                                                                                                     *a, **k))
    history = [{"epoch": 1, "train_loss": 2.0, "val_loss": 1.5, "val_top1": 40.0}]
    plot_curves(history, tmp_path / "curves.png", note="Train loss is above val loss by design: x")
    assert written == ["Train loss is above val loss by design: x"] and (tmp_path / "curves.png").stat().st_size


def test_python_run_logs_every_epoch_and_the_input_size(tmp_path, caplog):
    cfg = TrainConfig(model="vit_micro_patch2_8", data="digits", out=str(tmp_path / "run"), epochs=2, batch_size=64,
                      img_size=16, lr=1e-6)
    with caplog.at_level(logging.INFO, logger="vitlab"):
        m = run_training(cfg)
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("epoch 1/2  loss") for line in lines)
    assert any(line.startswith("epoch 2/2  loss") for line in lines)
    assert "digits: images 8x8, resized to the model's 16x16" in lines
    assert m["near_chance"] is True                          # lr 1e-6: nothing learned in 2 epochs
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["near_chance"] is True
    assert any("is chance level for 10 classes; train longer: --epochs 30" in line for line in lines)


def test_source_sizes_read_from_headers(tmp_path):
    paths = []
    for i, size in enumerate([(20, 10), (40, 30), (20, 10)]):
        Image.new("RGB", size).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    assert source_sizes(paths) == "from 20x10 to 40x30"
    assert source_sizes(paths[:1]) == "20x10"
    assert source_sizes([]) is None


def test_progress_off_a_terminal_prints_a_line_per_interval():
    from vitlab.cli.train import TimedProgress, progress_for

    stream = io.StringIO()
    progress = TimedProgress(range(3), total=3, desc="epoch 1", interval=0.0, stream=stream)
    seen = []
    for i in progress:
        seen.append(i)
        progress.set_postfix(loss="1.234")
    assert seen == [0, 1, 2]
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3 and lines[1].startswith("epoch 1: 2/3 batches, ") and lines[1].endswith("loss 1.234")
    quiet = io.StringIO()
    assert list(TimedProgress(range(5), interval=3600.0, stream=quiet)) == list(range(5))
    assert quiet.getvalue() == ""                        # within the interval: nothing
    assert progress_for(io.StringIO()).func is TimedProgress   # off a terminal


# The README's Python example (vitlab.train: TrainConfig(model="vit_micro_patch4_32", data="shapes", epochs=30,
# lr=5e-4, label_smoothing=0.0, drop_path=0.0, crop_scale=1.0)). shapes has no class cue in first-order pixel
# statistics (random colours on random textures), so any model sits at chance for its first few thousand images;
# at a reduced size (2 blocks instead of 6, 8 epochs) the recipe must still leave chance by a clear margin.
README_RECIPE = dict(model="vit_micro_patch4_32", data="shapes", lr=5e-4, label_smoothing=0.0, drop_path=0.0,
                     crop_scale=1.0)


def test_the_readme_recipe_learns_at_a_reduced_size(tmp_path):
    cfg = TrainConfig(**README_RECIPE, epochs=8, model_args={"depth": 2}, out=str(tmp_path / "shapes"))
    m = run_training(cfg)
    assert m["near_chance"] is False                         # above 16.7% + 5 points (3 std of chance: 4.1)
    assert m["val_top1"] > 22.0 and m["val_loss"] < math.log(6)
