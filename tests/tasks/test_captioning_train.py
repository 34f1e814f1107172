"""Captioning end to end on a tiny scenes run: metrics.json keeps the contract, the tokenizer travels in config.json
("task_extras"), the report figure is written; `vitlab predict` prints a caption, `vitlab explain` writes one map
per generated word into its HTML report."""
import json

import numpy as np
import pytest
from PIL import Image

from vitlab.cli import main
from vitlab.tasks import task_for_model
from vitlab.train import TrainConfig
from vitlab.train.run import run_training

CONTRACT = ("val_bleu4", "val_cider", "val_rougeL", "val_grounding", "val_grounding_uniform", "skipped_images")
SMALL = {"encoder_dim": 32, "encoder_depth": 1, "dim": 32, "depth": 1, "ffn_dim": 64, "num_heads": 2,
         "encoder_heads": 2}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from vitlab.data import captions

    out = tmp_path_factory.mktemp("cap") / "run"
    assert task_for_model("caption_vit_micro_patch8_64").name == "captioning"
    saved = captions.SCENES_TRAIN, captions.SCENES_VAL
    captions.SCENES_TRAIN, captions.SCENES_VAL = 96, 12
    try:
        metrics = run_training(TrainConfig(model="caption_vit_micro_patch8_64", data="scenes", epochs=2,
                                           batch_size=16, lr=3e-3, warmup_epochs=0, out=str(out),
                                           model_args=SMALL))
    finally:
        captions.SCENES_TRAIN, captions.SCENES_VAL = saved
    return out, metrics


def test_run_writes_the_contract_and_the_tokenizer(run_dir):
    out, metrics = run_dir
    saved = json.loads((out / "metrics.json").read_text())
    assert all(k in saved for k in CONTRACT) and saved["primary_metric"] == "val_bleu4"
    assert 0.0 <= saved["val_bleu4"] <= 1.0 and saved["skipped_images"] == 0
    assert saved["val_grounding"] is None or 0.0 <= saved["val_grounding"] <= 1.0
    config = json.loads((out / "config.json").read_text())
    assert "tokenizer" in config["task_extras"] and config["model_args"]["num_classes"] == saved["vocab_size"]
    assert (out / "captioning_attention.png").stat().st_size > 1000
    rows = (out / "metrics.csv").read_text().splitlines()
    assert "train_caption_ce" in rows[0] and "val_bleu4" in rows[0]


def test_predict_prints_a_caption(run_dir, tmp_path, capsys):
    out, _ = run_dir
    img = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(img)
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(out), str(img)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"{img}: ") and len(line) > len(str(img)) + 2


def test_explain_writes_a_map_per_word(run_dir, tmp_path, capsys):
    out, _ = run_dir
    from vitlab.data import captions

    saved = captions.SCENES_VAL
    captions.SCENES_VAL = 8
    try:
        assert main(["explain", "--checkpoint", str(out), "--data", "scenes", "--samples", "2",
                     "--out", str(tmp_path / "ex")]) == 0
    finally:
        captions.SCENES_VAL = saved
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "ex" / "summary.json").read_text())
    assert len(summary["captions"]) == 2 and all(c["words"] for c in summary["captions"])
    assert "scenes val #0: " in printed and "2 figures" in printed
    html = (tmp_path / "ex" / "index.html").read_text()
    assert all(f in html for f in summary["files"]) and summary["captions"][0]["caption"] in html
