"""DINO through the trainer and the CLI: metrics.json's contract, bit-for-bit resume, the loss falls on fixed views,
`vitlab eval --protocol`, the refusals, and the study's quick mode."""
import json

import pytest
import torch
from safetensors.torch import load_file

import vitlab
from vitlab.cli import main
from vitlab.errors import VitlabError
from vitlab.tasks.self_supervised import DINOObjective, MultiCropAugment
from vitlab.train import TrainConfig, run_training

SMALL = {"out_dim": 32, "hidden_dim": 32, "bottleneck_dim": 16, "num_local_crops": 2}


def tiny(tmp_path, name="run", **kw):
    base = dict(model="dino_vit_micro_patch4_32", data="scenes:32", out=str(tmp_path / name), epochs=2,
                batch_size=16, lr=1e-3, warmup_epochs=0.5, seed=0, model_args=SMALL)
    return TrainConfig(**{**base, **kw})


def test_run_writes_the_metrics_contract_and_resumes_bit_for_bit(tmp_path):
    m = run_training(tiny(tmp_path, "full"))
    saved = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert {"val_knn_top1", "teacher_entropy", "collapsed"} <= saved.keys()
    assert isinstance(saved["collapsed"], bool) and 0 <= saved["val_knn_top1"] <= 100
    assert saved["teacher_entropy"] == pytest.approx(m["teacher_entropy"]) and saved["task"] == "self_supervised"
    assert (tmp_path / "full" / "cls_attention.png").stat().st_size > 0
    run_training(tiny(tmp_path, "split", stop_at=1))
    cfg = TrainConfig.from_dict({**json.loads((tmp_path / "split" / "config.json").read_text())["train"],
                                 "stop_at": None})
    run_training(cfg, resume=True)
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "split" / "model.safetensors")
    assert {"center", "step", "student.head.last_layer.weight_v", "teacher.backbone.cls_token"} <= a.keys()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert int(a["step"]) == 4 and a["center"].abs().sum() > 0
    qkv = "backbone.blocks.0.attn.qkv.weight"
    assert not torch.equal(a[f"student.{qkv}"], a[f"teacher.{qkv}"])
    # any checkpoint, through the CLI: k-NN and the linear probe on frozen features
    assert main(["eval", "--protocol", "knn", "--checkpoint", str(tmp_path / "full"), "--data", "scenes:32",
                 "--json"]) == 0


def test_student_loss_falls_on_fixed_views_of_a_fixed_teacher():
    torch.manual_seed(0)
    model = vitlab.create_model("dino_vit_micro_patch4_32", **SMALL, drop_path_rate=0.0)
    objective = DINOObjective(model, epochs=2)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    objective.steps_per_epoch = 1000     # no bind: the teacher stays put, the student learns to match its views
    c = model.cfg
    aug = MultiCropAugment(32, c.local_size, 2, c.global_crops_scale, c.local_crops_scale, c.mean, c.std)
    from vitlab.data import build_data
    images = build_data("scenes:16", 32).train.images
    x, targets = aug(images, torch.zeros(16, dtype=torch.long))
    # the target fixed as well: the center at the teacher's mean and kept there (CE = H(teacher) + KL, and a
    # moving center changes H(teacher))
    with torch.no_grad():
        model.center.copy_(model(x, targets["local"])["teacher"].mean(0, keepdim=True))
    model.cfg.center_momentum = 1.0
    losses = []
    for _ in range(25):
        loss, _ = objective(model, x, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses


def test_cli_protocols_on_a_supervised_checkpoint_and_refusals(tmp_path, capsys):
    net = vitlab.create_model("vit_micro_patch4_32", num_classes=6)
    from vitlab.checkpoint import save_model
    from vitlab.data.shapes import SHAPE_CLASSES
    save_model(net, tmp_path / "sup", classes=list(SHAPE_CLASSES))
    assert main(["eval", "--protocol", "linear", "--checkpoint", str(tmp_path / "sup"), "--data", "scenes:24"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("linear_top1 ") and "24 train / 6 val images, 64-d features" in out
    code = main(["train", "--model", "dino_vit_micro_patch4_32", "--data", "scenes:16", "--ema", "0.99",
                 "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == ("vitlab: error: --ema: dino_vit_micro_patch4_32 is a DINO model; its "
                                         "teacher is already the EMA of the student") or "--ema: dino" in err
    assert main(["eval", "--protocol", "knn", "--checkpoint", str(tmp_path / "sup"), "--data", "scenes:x"]) == 2
    assert capsys.readouterr().err == ("vitlab eval: error: data spec 'scenes:x': expected scenes or scenes:N, then "
                                       "optionally ,background=textured|plain and ,object_size=default|large (N a "
                                       "positive number of training images; each option at most once)\n")
    with pytest.raises(VitlabError, match="--protocol must be one of knn, linear"):
        from vitlab.eval_protocols import evaluate_protocol
        evaluate_protocol(str(tmp_path / "sup"), "scenes:8", "svm")


def test_study_quick_mode(tmp_path, capsys):
    assert main(["study", "dino", "--quick", "--seeds", "1", "--out", str(tmp_path / "s"), "--model-arg",
                 "teacher_temp=0.02", "--background", "plain", "--objects", "default"]) == 0
    r = json.loads((tmp_path / "s" / "dino.json").read_text())
    assert r["claim"]["verdict"].startswith("none") and set(r["table"]) == {"dino", "supervised", "untrained"}
    assert r["dino_model_args"] == {"teacher_temp": 0.02} and r["data"] == "scenes:32,background=plain"
    assert r["command"].endswith("--model-arg teacher_temp=0.02 --background plain --objects default")
    saved = json.loads((tmp_path / "s" / "dino-seed0" / "config.json").read_text())["train"]
    assert saved["model_args"] == {"teacher_temp": 0.02} and saved["data"] == "scenes:32,background=plain"
    assert r["dino_above_untrained"]["verdict"].startswith("none")
    row = r["per_seed"][0]
    # the untrained row is the backbone at its seeded init: the same numbers again from a fresh build
    from vitlab.studies.dino import measure
    again = measure(str(tmp_path / "s" / "dino-seed0"), str(tmp_path / "s" / "supervised-seed0"), r["data"], 32, 0,
                    untrained=(r["supervised_model"], {}))
    assert again["untrained"]["knn_top1"] == row["untrained"]["knn_top1"]
    assert again["dino"]["knn_top1"] == row["dino"]["knn_top1"]
    assert main(["study", "dino", "--quick", "--out", str(tmp_path / "t"), "--model-arg", "teacher_temp"]) == 2
    assert capsys.readouterr().err.strip().endswith("--model-arg expects KEY=VALUE, got 'teacher_temp'")
    assert 0 <= row["dino"]["jaccard_best_head"] <= 1 and len(row["supervised"]["jaccard_per_head"]) == 4
    assert (tmp_path / "s" / "dino.png").exists() and (tmp_path / "s" / "dino_attention.png").exists()


def test_explain_shows_the_cls_attention_of_dino_and_supervised_models(tmp_path, capsys):
    from vitlab.checkpoint import save_model

    dino = vitlab.create_model("dino_vit_micro_patch4_32", **SMALL)
    save_model(dino, tmp_path / "dino", data="scenes:8")
    assert main(["explain", "--checkpoint", str(tmp_path / "dino"), "--out", str(tmp_path / "e1")]) == 0
    assert (tmp_path / "e1" / "cls_attention.png").stat().st_size > 0
    # a supervised ViT: the same per-head picture and masks from the library call (the explain report of a
    # classifier has its own per-head [CLS] figure)
    from vitlab.explain.cls_attention import plot_cls_attention
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    path = plot_cls_attention([("DINO", dino), ("supervised", vitlab.create_model("vit_micro_patch4_32"))], images,
                              tmp_path / "both.png")
    assert path.stat().st_size > 0


def test_study_quick_mode_trains_in_one_process_whatever_jobs_says(tmp_path, monkeypatch):
    import vitlab.studies.dino as study

    seen = {}

    class Stop(BaseException):           # not an error the CLI reports: it stops the study before anything trains
        pass

    def record(runs, jobs=1, fn=None):
        seen["jobs"], seen["runs"] = jobs, len(runs)
        raise Stop

    monkeypatch.setattr(study, "train_all", record)
    for quick, jobs in ((True, 1), (False, 2)):
        args = [*(["--quick"] if quick else []), "--seeds", "2", "--jobs", "2", "--out", str(tmp_path / f"q{quick}")]
        with pytest.raises(Stop):
            main(["study", "dino", *args])
        assert seen == {"jobs": jobs, "runs": 4}
