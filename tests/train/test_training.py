"""End-to-end training: it learns, resumes bit for bit, checkpoints atomically and stops on a NaN."""
import json

import pytest
import torch
from safetensors.torch import load_file

import vitlab
from vitlab.checkpoint import load_model
from vitlab.errors import VitlabError
from vitlab.train import TrainConfig, run_training
from vitlab.train import objectives as objectives_module


def tiny_config(tmp_path, name="run", **kw):
    base = dict(model="vit_micro_patch2_8", data="digits", out=str(tmp_path / name), epochs=3, batch_size=32,
                lr=2e-3, warmup_epochs=0.5, seed=0)
    return TrainConfig(**{**base, **kw})


def test_tiny_run_learns_and_writes_the_run_directory(tmp_path):
    cfg = tiny_config(tmp_path, epochs=6, crop_scale=1.0)
    m = run_training(cfg)
    out = tmp_path / "run"
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,step,train_loss") and len(rows) == 1 + 6
    losses = [float(r.split(",")[2]) for r in rows[1:]]
    assert losses[-1] < 0.7 * losses[0]                  # the loss falls
    assert m["val_top1"] > 40.0                           # chance is 10%
    saved = json.loads((out / "metrics.json").read_text())
    for key in ("val_top1", "val_top5", "epochs", "params", "train_images_per_s", "skipped_images"):
        assert key in saved
    assert saved["epochs"] == 6 and saved["skipped_images"] == 0 and saved["params"] == 302666
    assert saved["reference_svc_top1"] > 98.5
    assert (out / "curves.png").stat().st_size > 0 and (out / "confusion.png").stat().st_size > 0
    # the run directory is a checkpoint: it rebuilds the model and gives the recorded accuracy
    model = load_model(out)
    assert model.vitlab_meta["classes"] == [str(i) for i in range(10)]
    from vitlab.cli.eval import evaluate_checkpoint
    assert evaluate_checkpoint(str(out), "digits")["val_top1"] == pytest.approx(m["val_top1"])
    bf16 = evaluate_checkpoint(str(out), "digits", precision="bf16")          # oneDNN bf16 path, packed weights
    assert abs(bf16["val_top1"] - m["val_top1"]) < 2.0 and bf16["val_loss"] != pytest.approx(m["val_loss"], abs=1e-7)


def test_resume_equals_uninterrupted_run_bit_for_bit(tmp_path):
    # dropout, stochastic depth, Mixup/CutMix and EMA all draw on or carry state that must be restored
    common = dict(epochs=3, drop_path=0.1, mixup=0.2, cutmix=1.0, ema=0.9, model_args={"drop_rate": 0.1})
    run_training(tiny_config(tmp_path, "full", **common))
    run_training(tiny_config(tmp_path, "split", stop_at=1, **common))
    assert json.loads((tmp_path / "split" / "metrics.json").read_text())["epochs"] == 1
    cfg = TrainConfig.from_dict({**json.loads((tmp_path / "split" / "config.json").read_text())["train"],
                                 "stop_at": None})
    run_training(cfg, resume=True)
    a = load_file(tmp_path / "full" / "model.safetensors")
    b = load_file(tmp_path / "split" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa = torch.load(tmp_path / "full" / "train_state.pt", weights_only=True)
    sb = torch.load(tmp_path / "split" / "train_state.pt", weights_only=True)
    assert all(torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"])
    assert (tmp_path / "full" / "metrics.csv").read_text().split("\n")[1].split(",")[:7] == \
        (tmp_path / "split" / "metrics.csv").read_text().split("\n")[1].split(",")[:7]


def test_interrupted_checkpoint_write_leaves_previous_loadable(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, epochs=2, stop_at=1)
    run_training(cfg)
    before = load_file(tmp_path / "run" / "model.safetensors")

    import vitlab.checkpoint_files as ckpt

    def dying_save(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\x00" * 100)                 # half a file, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "save_file", dying_save)
    with pytest.raises(KeyboardInterrupt):
        run_training(TrainConfig.from_dict({**cfg.__dict__, "stop_at": None}), resume=True)
    after = load_file(tmp_path / "run" / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not list((tmp_path / "run").glob(".*.tmp"))            # no temporary left behind
    load_model(tmp_path / "run")


def test_non_finite_loss_stops_before_the_step_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, epochs=3)
    original = objectives_module.ClassificationObjective.__call__
    calls = {"n": 0}

    def poisoned(self, model, x, targets):
        calls["n"] += 1
        loss, parts = original(self, model, x, targets)
        return (loss * float("nan"), parts) if calls["n"] == 50 else (loss, parts)

    monkeypatch.setattr(objectives_module.ClassificationObjective, "__call__", poisoned)
    with pytest.raises(VitlabError, match=r"non-finite loss \(nan\) at step 50 \(epoch 2\)"):
        run_training(cfg)
    saved = load_file(tmp_path / "run" / "model.safetensors")
    state = torch.load(tmp_path / "run" / "train_state.pt", weights_only=True)
    assert state["epoch"] == 1 and state["step"] == 42                  # 1347 // 32 steps per epoch
    assert all(torch.isfinite(v).all() for v in saved.values())


def test_existing_run_is_not_overwritten_without_consent(tmp_path):
    cfg = tiny_config(tmp_path, epochs=1)
    run_training(cfg)
    with pytest.raises(VitlabError, match="already holds a run; pass --resume"):
        run_training(cfg)
    with pytest.raises(VitlabError, match="nothing to train"):
        run_training(cfg, resume=True)


def test_fine_tune_from_checkpoint_at_other_size(tmp_path):
    run_training(tiny_config(tmp_path, "pre", epochs=1))
    m = run_training(tiny_config(tmp_path, "ft", epochs=1, checkpoint=str(tmp_path / "pre"), img_size=16))
    assert m["image_size"] == 16
    model = vitlab.create_model("vit_micro_patch2_8", checkpoint_path=tmp_path / "ft")
    assert model.pos_embed.shape[1] == 1 + 64
