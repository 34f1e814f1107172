"""Distributed training on 2 CPU processes (gloo): DDP and FSDP2 equal one process with the same global batch,
every sample is seen once per epoch, a NaN on one rank stops all; `torchrun -m vitlab train --fsdp` end to end.
Also the single-process speed/memory options: activation checkpointing, channels-last, the deferred NaN check."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vitlab
from vitlab.data import ImageSet, batches
from vitlab.errors import VitlabError
from vitlab.train import TrainConfig, run_training
from vitlab.train.distributed import DistInfo, env_info, per_rank_batch, wrap_model
from vitlab.train.trainer import NonFiniteLoss, Trainer

WORKER = Path(__file__).with_name("dist_worker.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    return {**env, "OMP_NUM_THREADS": "1"}


def _run(cmd, cwd):
    done = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


@pytest.fixture(scope="module")
def worker_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    _run(TORCHRUN + [str(WORKER), str(out)], out)
    _run([sys.executable, str(WORKER), str(out)], out)
    return {p.stem: torch.load(p) for p in out.glob("*.pt")}


@pytest.mark.parametrize("scenario,reference", [("ddp", "single"), ("fsdp", "single"),
                                                ("ddp_accum", "single_accum")])
def test_two_processes_equal_one_with_the_same_global_batch(worker_results, scenario, reference):
    ours, ref = worker_results[scenario], worker_results[reference]
    assert ours["steps"] == ref["steps"] == (6 if reference == "single" else 3)
    assert set(ours["weights"]) == set(ref["weights"])
    for name, w in ref["weights"].items():
        torch.testing.assert_close(ours["weights"][name], w, atol=1e-5, rtol=0, msg=name)
    assert ours["train_loss"] == pytest.approx(ref["train_loss"], abs=1e-5)   # the job's mean, all ranks
    # each sample exactly once per epoch, split evenly between the two ranks, none on both
    rank0, rank1 = ours["seen"]
    assert sorted(rank0 + rank1) == list(range(96)) and len(rank0) == len(rank1) == 48


def test_detection_under_ddp_equals_one_process(worker_results):
    ours, ref = worker_results["detection"], worker_results["single_detection"]
    assert ours["steps"] == ref["steps"] == 4
    for name, w in ref["weights"].items():
        torch.testing.assert_close(ours["weights"][name], w, atol=1e-5, rtol=0, msg=name)
    assert ours["parts"] == pytest.approx(ref["parts"], abs=1e-5)      # loss_ce, loss_bbox, loss_giou: the job's
    assert set(ref["parts"]) == {"train_loss", "train_loss_ce", "train_loss_bbox", "train_loss_giou"}


def test_a_nan_on_one_rank_stops_every_rank_before_the_step(worker_results):
    result = worker_results["nan"]
    assert result["stopped_on"] == [[1], [1]]                 # rank 1's NaN, both ranks stopped
    assert "at step 3" in result["stopped"] and result["steps"] == 2
    assert all(torch.isfinite(w).all() for w in result["weights"].values())


def test_a_time_limit_up_on_one_rank_stops_every_rank_at_the_same_step(worker_results):
    assert worker_results["time_limit"]["steps_per_rank"] == [[1, 1], [1, 1]]     # (steps, out_of_time) per rank


def test_torchrun_vitlab_train_fsdp_end_to_end(tmp_path):
    """The command users run: 2 processes, FSDP2 per block; rank 0 alone writes a loadable run directory whose
    first-step loss (before any update, so the same weights; no drop-path, whose masks differ per rank) equals a
    single-process run's."""
    args = ["train", "--data", "digits", "--epochs", "1", "--batch-size", "1344", "--crop-scale", "1",
            "--warmup-epochs", "0", "--lr", "1e-3", "--drop-path", "0"]
    done = _run(TORCHRUN + ["-m", "vitlab"] + args + ["--fsdp", "--out", str(tmp_path / "fsdp")], tmp_path)
    assert done.stdout.count("vit_micro_patch2_8 on digits:") == 1    # only rank 0 reports
    single = run_training(TrainConfig(model="vit_micro_patch2_8", data="digits", epochs=1, batch_size=1344,
                                      crop_scale=1.0, warmup_epochs=0, lr=1e-3, drop_path=0.0,
                                      out=str(tmp_path / "one")))
    metrics = json.loads((tmp_path / "fsdp" / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and metrics["params"] == single["params"]
    first = [float((tmp_path / d / "metrics.csv").read_text().splitlines()[1].split(",")[2]) for d in ("fsdp", "one")]
    assert first[0] == pytest.approx(first[1], abs=1e-4)       # one step: the loss of the identical initial model
    model = vitlab.create_model("vit_micro_patch2_8", checkpoint_path=str(tmp_path / "fsdp"))
    assert model.num_classes == 10 and (tmp_path / "fsdp" / "rollout.png").exists()


# --- single-process pieces ---------------------------------------------------------------------------------------
def test_env_info_reads_torchrun_variables(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert env_info() == DistInfo(rank=2, world_size=4, local_rank=0)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(VitlabError, match="RANK 4 is outside WORLD_SIZE 4"):
        env_info()


def test_global_batch_must_split_and_fsdp_needs_torchrun():
    assert per_rank_batch(64, DistInfo(0, 4, 0)) == 16
    with pytest.raises(VitlabError, match="does not split evenly over 3 processes"):
        per_rank_batch(64, DistInfo(0, 3, 0))
    model = torch.nn.Linear(2, 2)
    assert wrap_model(model, DistInfo(), torch.device("cpu")) is model
    with pytest.raises(VitlabError, match="--fsdp needs several processes"):
        wrap_model(model, DistInfo(), torch.device("cpu"), fsdp=True)


def test_rank_shards_of_each_batch_make_up_the_global_batch():
    data = ImageSet(["a"], torch.zeros(50, dtype=torch.long), 1,
                    images=torch.arange(50, dtype=torch.uint8).view(50, 1, 1, 1).expand(50, 3, 1, 1).contiguous())
    one = [x[:, 0, 0, 0].tolist() for x, _ in batches(data, 12, shuffle=True, seed=3, epoch=2, drop_last=True)]
    ranks = [[x[:, 0, 0, 0].tolist() for x, _ in batches(data, 4, shuffle=True, seed=3, epoch=2, drop_last=True,
                                                          rank=r, world_size=3)] for r in range(3)]
    assert len(one) == len(ranks[0]) == 4
    for j, global_batch in enumerate(one):
        assert sorted(sum((ranks[r][j] for r in range(3)), [])) == sorted(global_batch)


def _tiny_vit(**kw):
    torch.manual_seed(0)
    return vitlab.create_model("vit_micro_patch2_8", num_classes=3, depth=2, **kw)


def test_grad_checkpointing_gives_the_plain_gradients_even_with_drop_path_and_dropout():
    grads = []
    for checkpointing in (False, True):
        model = _tiny_vit(drop_path_rate=0.3, drop_rate=0.1).train()
        model.grad_checkpointing = checkpointing
        torch.manual_seed(1)
        x = torch.randn(4, 3, 8, 8)
        model(x).logsumexp(-1).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-6, atol=1e-7, msg=name)


def _one_step(model, memory_format=torch.contiguous_format, fused=False, nan_at=None, steps=1, deferred=False):
    from vitlab.train.optim import build_optimizer

    class Identity(torch.nn.Module):
        def forward(self, images, labels):
            return images, labels

    calls = []

    def objective(m, x, y):
        calls.append(x.is_contiguous(memory_format=memory_format))
        loss = torch.nn.functional.cross_entropy(m(x), y)
        return (loss * float("nan") if len(calls) == nan_at else loss), {}

    opt = build_optimizer(model, 1e-2, 0.05, fused=fused)
    trainer = Trainer(model, objective, opt, None, batch_transform=Identity(), device=torch.device("cpu"),
                      memory_format=memory_format)
    trainer.deferred_check = deferred
    g = torch.Generator().manual_seed(2)
    data = [(torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 3, (4,), generator=g)) for _ in range(steps)]
    trainer.train_epoch(data, 1)
    assert all(calls)
    return model


def test_channels_last_step_equals_the_plain_step():
    plain = _one_step(_tiny_vit())
    nhwc = _one_step(_tiny_vit().to(memory_format=torch.channels_last), memory_format=torch.channels_last)
    for (name, a), b in zip(plain.state_dict().items(), nhwc.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)


def test_fused_adamw_equals_foreach():
    # no q/k/v bias: the key bias has an exactly-zero true gradient (softmax ignores a constant shift), so Adam
    # would scale rounding noise up to +-lr there and any two implementations would differ by chance
    foreach = _one_step(_tiny_vit(qkv_bias=False), steps=3)
    fused = _one_step(_tiny_vit(qkv_bias=False), fused=True, steps=3)
    for (name, a), b in zip(foreach.state_dict().items(), fused.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)


def test_deferred_nan_check_skips_updates_on_the_device_then_raises():
    """The CUDA path (no host sync per step), exercised on the CPU: a fused optimizer skips every update from the
    NaN step on; the host reads the flag at the end of the epoch and names the step."""
    expected = _one_step(_tiny_vit(), fused=True, steps=2)           # two good steps
    model = _tiny_vit()
    with pytest.raises(NonFiniteLoss, match="at step 3"):
        _one_step(model, fused=True, nan_at=3, steps=5, deferred=True)
    for (name, a), b in zip(expected.state_dict().items(), model.state_dict().values()):
        torch.testing.assert_close(b, a, msg=name)                    # steps 3-5 never touched the weights
