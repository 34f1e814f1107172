"""TrainConfig.time_limit_s: a run stops at the first optimizer step at which its training time reaches the budget,
evaluates, and leaves a checkpoint that loads and resumes."""
import csv
import json
import time

import pytest
import torch
from safetensors import safe_open
from torch import nn

from vitlab.checkpoint import load_model
from vitlab.errors import VitlabError
from vitlab.train import TrainConfig, run_training
from vitlab.train.trainer import Trainer

STEP_S = 0.05        # each batch of the toy objective sleeps this long: a step can never be shorter


class _ToFloat(nn.Module):
    def forward(self, images, targets):
        return images.float() / 255, targets


def _toy_trainer(time_limit_s, grad_accum=1):
    """A linear model whose objective sleeps STEP_S per batch; returns (trainer, step times, batches seen)."""
    model = nn.Linear(4, 2)
    batches: list[int] = []

    def objective(model, x, y):
        time.sleep(STEP_S)
        batches.append(len(y))
        return nn.functional.cross_entropy(model(x.flatten(1)), y), {}

    step_times: list[float] = []
    trainer = Trainer(model, objective, torch.optim.SGD(model.parameters(), lr=0.1), None,
                      batch_transform=_ToFloat(), device=torch.device("cpu"), grad_accum=grad_accum,
                      on_step=lambda step, stats: step_times.append(time.perf_counter()), time_limit_s=time_limit_s)
    return trainer, step_times, batches


def _data(n=20):
    g = torch.Generator().manual_seed(0)
    return [(torch.randint(0, 256, (3, 1, 2, 2), dtype=torch.uint8, generator=g), torch.tensor([0, 1, 0]))
            for _ in range(n)]


def test_trainer_stops_at_the_first_step_past_the_limit():
    limit = 4.4 * STEP_S
    trainer, step_times, _ = _toy_trainer(limit)
    start = time.perf_counter()
    stats = trainer.train_epoch(_data(), epoch=1, total=20)
    assert trainer.out_of_time and stats["epoch_time_s"] == pytest.approx(trainer.train_time_s)
    # every step takes >= STEP_S, so 5 steps take >= 0.25 s > limit: a stop at the first step past the limit comes
    # at step 5 at the latest (a check only at the end of the epoch would give 20)
    assert 1 <= trainer.step <= 5 and len(step_times) == trainer.step
    assert trainer.train_time_s >= limit
    if trainer.step > 1:
        assert step_times[-2] - start < limit                         # the step before the stop was within it
    longest_step = max(b - a for a, b in zip([start, *step_times], step_times))
    assert trainer.train_time_s <= limit + longest_step + 0.05        # the budget plus one step (and the epoch's end)


def test_trainer_without_a_limit_trains_every_batch_and_with_accumulation_stops_at_a_step():
    trainer, _, _ = _toy_trainer(None)
    trainer.train_epoch(_data(6), epoch=1, total=6)
    assert trainer.step == 6 and not trainer.out_of_time and trainer.train_time_s >= 6 * STEP_S
    accum, _, batches = _toy_trainer(3.5 * STEP_S, grad_accum=2)
    accum.train_epoch(_data(), epoch=1, total=20)
    assert accum.out_of_time and len(batches) == 2 * accum.step < 20          # never half a step


def _tiny(tmp_path, **kw):
    base = dict(model="vit_micro_patch2_8", data="digits", out=str(tmp_path / "run"), epochs=20, batch_size=32,
                lr=2e-3, warmup_epochs=0.5, seed=0, report=False)
    return TrainConfig(**{**base, **kw})


def test_a_run_with_a_tiny_budget_stops_early_evaluates_saves_and_resumes(tmp_path):
    out = tmp_path / "run"
    m = run_training(_tiny(tmp_path, time_limit_s=0.5))
    assert m["stopped_at_time_limit"] and m["epochs"] < 20 and m["time_limit_s"] == 0.5
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == m["epochs"] and int(rows[-1]["step"]) == m["steps"]
    spent = sum(float(r["epoch_time_s"]) for r in rows)             # what the studies read (families.train_seconds)
    assert spent == pytest.approx(m["train_time_s"], rel=1e-4)
    assert 0.5 <= spent <= 0.5 + 3 * spent / m["steps"]              # the budget plus about one (mean) step
    # the checkpoint is the evaluated model, at the step it stopped
    model = load_model(out)
    from vitlab.cli.eval import evaluate_checkpoint
    assert evaluate_checkpoint(str(out), "digits")["val_top1"] == pytest.approx(m["val_top1"])
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert int(f.metadata()["step"]) == m["steps"]
    assert sum(p.numel() for p in model.parameters()) == m["params"]
    assert json.loads((out / "metrics.json").read_text())["steps"] == m["steps"]
    # spent budget: nothing to resume; a larger one continues at the next epoch, from the time already spent
    with pytest.raises(VitlabError, match="--time-limit-s"):
        run_training(_tiny(tmp_path, time_limit_s=0.5), resume=True)
    more = run_training(_tiny(tmp_path, time_limit_s=spent + 0.4), resume=True)
    assert more["stopped_at_time_limit"] and more["steps"] > m["steps"] and more["epochs"] >= m["epochs"] + 1
    assert more["train_time_s"] >= spent + 0.4


def test_bad_time_limits_are_refused():
    for bad in (0, -1.0, float("nan"), float("inf"), "x"):
        with pytest.raises(VitlabError, match="--time-limit-s"):
            TrainConfig(time_limit_s=bad).validate()


def test_vitlab_train_time_limit_on_the_command_line_and_on_resume(tmp_path, capsys):
    from vitlab.cli import main

    run = str(tmp_path / "cli")
    base = ["train", "--data", "digits", "--img-size", "8", "--epochs", "9", "--no-report", "--out", run]
    assert main(base + ["--time-limit-s", "0.3"]) == 0
    first = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert first["stopped_at_time_limit"] and first["epochs"] < 9
    assert main(["train", "--resume", run, "--time-limit-s", "0.6"]) == 0      # a resumed run may get more time
    second = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert second["time_limit_s"] == 0.6 and second["train_time_s"] >= 0.6 and second["steps"] > first["steps"]
    capsys.readouterr()
    assert main(["train", "--resume", run, "--time-limit-s", "0.6"]) == 2      # spent: one line, no traceback
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--time-limit-s" in err[0] and "nothing to train" in err[0]
