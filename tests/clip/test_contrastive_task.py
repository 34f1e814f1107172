"""The contrastive task end to end: loss falls, a run trains from the CLI with the promised metrics, zero-shot and
predict --text read its checkpoint (tokenizer included); bad rows of a caption CSV are skipped and counted."""
from __future__ import annotations

import json

import pytest
import torch

import vitlab
from vitlab.cli import main
from vitlab.data.image_text import build_image_text_data
from vitlab.errors import VitlabError
from vitlab.tasks.contrastive import ContrastiveObjective


def test_loss_falls_on_a_fixed_batch():
    torch.manual_seed(0)
    m = vitlab.create_model("clip_micro_patch16_64", vocab_size=12)
    x = torch.randn(8, 3, 64, 64)
    ids = torch.tensor([[1, 4 + i % 8, 2] for i in range(8)])
    opt = torch.optim.AdamW(m.parameters(), 3e-3)
    objective, losses = ContrastiveObjective(), []
    for _ in range(25):
        loss, parts = objective(m, x, ids)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert set(parts) == {"infonce", "logit_scale"}
    assert losses[-1] < 0.5 * losses[0]


def test_train_zero_shot_predict_from_the_cli(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--model", "clip_micro_patch16_64", "--data", "scenes:64", "--epochs", "1",
                 "--batch-size", "16", "--out", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("val_i2t_r1", "val_i2t_r5", "val_t2i_r1", "val_t2i_r5", "val_median_rank", "val_mean_rank",
                "val_zeroshot_top1", "val_compositional_r5"):
        assert key in metrics
    assert "tokenizer" in json.loads((run / "config.json").read_text())["task_extras"]
    capsys.readouterr()
    assert main(["zero-shot", "--checkpoint", str(run), "--data", "scenes:24", "--classes",
                 "circle,square,triangle,cross,ring,star", "--template", "a {}", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["images"] == 6 and r["templates"] == ["a {}"] and 0 <= r["top1"] <= 100
    from PIL import Image

    Image.fromarray(torch.zeros(64, 64, 3, dtype=torch.uint8).numpy()).save(tmp_path / "x.png")
    assert main(["predict", "--checkpoint", str(run), str(tmp_path / "x.png"), "--text", "a small red circle",
                 "--text", "a large blue star"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{tmp_path / 'x.png'}: ") and "'a small red circle'" in line
    assert main(["zero-shot", "--checkpoint", str(run), "--data", "scenes:24", "--classes", "a,b"]) == 2
    assert "--classes names 2 classes but scenes:24 has 6" in capsys.readouterr().err


def test_csv_bad_rows_skipped_and_counted(tmp_path):
    from PIL import Image

    for i in range(4):
        Image.fromarray((torch.rand(20, 20, 3) * 255).byte().numpy()).save(tmp_path / f"{i}.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    rows = ["filepath,caption"] + [f"{i}.png,picture number {i}" for i in range(4)] + ["bad.png,broken", "0.png,"]
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    data = build_image_text_data(str(tmp_path / "pairs.csv"), 16, val_fraction=0.25)
    assert len(data.train) + len(data.val) == 4
    assert len(data.skipped) == 2 and data.skipped[0].startswith("bad.png: ") and "empty caption" in data.skipped[1]
    with pytest.raises(VitlabError,
                       match="the header must name the columns filepath and caption"):
        (tmp_path / "h.csv").write_text("file,text\nx,y\n")
        build_image_text_data(str(tmp_path / "h.csv"), 16)
