"""`--tensorboard`: the event files hold the numbers metrics.csv holds, one point per optimizer step, the report's
figures; a resumed run appends without repeating a step; without the package, a one-line error."""
import csv
import json
import math
import sys

import pytest

from vitlab.cli import main
from vitlab.train import TrainConfig, run_training

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

def tiny_config(tmp_path, **kw):
    base = dict(model="vit_micro_patch2_8", data="digits", out=str(tmp_path / "run"), epochs=2, batch_size=32,
                lr=2e-3, warmup_epochs=0.5, seed=0, tensorboard=True)
    return TrainConfig(**{**base, **kw})


def read_events(run_dir):
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})   # 0: keep every event
    acc.Reload()
    return acc


def read_csv(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def scalars(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def assert_events_match_csv(acc, rows):
    for name in rows[0]:
        if name in ("epoch", "step"):
            continue
        logged = scalars(acc, f"epoch/{name}")
        expected = [(int(r["step"]), float(r[name])) for r in rows]
        assert [s for s, _ in logged] == [s for s, _ in expected], name
        # metrics.csv keeps 6 significant digits; the events keep float32
        assert [v for _, v in logged] == pytest.approx([v for _, v in expected], rel=1e-5), name


def test_tensorboard_events_match_metrics_csv(tmp_path):
    out = tmp_path / "run"
    run_training(tiny_config(tmp_path))
    acc = read_events(out)
    rows = read_csv(out)
    assert len(rows) == 2 and {"train_loss", "val_top1", "val_top5", "val_loss", "lr"} <= set(rows[0])
    assert_events_match_csv(acc, rows)
    # one point per optimizer step: loss and the rate it used; their epoch means agree with the csv's
    per_epoch, last = int(rows[0]["step"]), int(rows[1]["step"])
    assert last == 2 * per_epoch and per_epoch > 10
    loss, lr = scalars(acc, "train/loss"), scalars(acc, "train/lr")
    assert [s for s, _ in loss] == [s for s, _ in lr] == list(range(1, last + 1))
    # the rate each step used, by hand: warm-up capped at 20% of 2 epochs, then cosine to 1% of the peak
    warmup, total = int(0.4 * per_epoch), last
    expected_lr = [2e-3 * ((i + 1) / warmup if i < warmup else
                           0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * (i - warmup) / (total - warmup))))
                   for i in range(last)]
    assert [v for _, v in lr] == pytest.approx(expected_lr, rel=1e-6)
    first_epoch = [v for s, v in loss if s <= per_epoch]
    assert sum(first_epoch) / len(first_epoch) == pytest.approx(float(rows[0]["train_loss"]), rel=1e-5)
    tags = acc.Tags()["images"]
    assert {"figures/curves", "figures/confusion"} <= set(tags)
    image = acc.Images("figures/curves")[-1]
    assert image.step == last and image.width > 100 and image.height > 100
    assert json.loads((out / "config.json").read_text())["train"]["tensorboard"] is True


def test_resume_appends_without_repeating_a_step(tmp_path):
    out = tmp_path / "run"
    run_training(tiny_config(tmp_path, stop_at=1))
    per_epoch = int(read_csv(out)[0]["step"])
    # an interrupted process logged steps past its last checkpoint: they must not show twice after the resume
    from torch.utils.tensorboard import SummaryWriter

    stale = SummaryWriter(str(out))
    for step in range(per_epoch + 1, per_epoch + 6):
        stale.add_scalar("train/loss", 99.0, step)
    stale.close()
    run_training(tiny_config(tmp_path), resume=True)
    acc = read_events(out)
    steps = [s for s, _ in scalars(acc, "train/loss")]
    assert steps == list(range(1, 2 * per_epoch + 1))          # each step once, in order
    assert 99.0 not in [v for _, v in scalars(acc, "train/loss")]
    assert_events_match_csv(acc, read_csv(out))


def test_without_the_package_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)      # import tensorboard raises ImportError
    rc = main(["train", "--tensorboard", "--epochs", "1", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err == ("vitlab train: error: --tensorboard needs the tensorboard package: pip install tensorboard "
                   "(or pip install 'vitlab[tensorboard]')\n")
    assert not (tmp_path / "run").exists()                         # refused before the run directory is made
