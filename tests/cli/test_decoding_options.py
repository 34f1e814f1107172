"""`--beam-size` / `--length-penalty` of `vitlab predict` and `vitlab eval` reach the decoding of captioning and
translation checkpoints: beam 1 is the greedy output, a wider beam prints what the library's beam search gives
for the same width and penalty; the options are refused in one line (exit 2) where there is no decoding."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import vitlab
from vitlab.checkpoint import save_model
from vitlab.cli import main

SMALL = {"encoder_dim": 32, "encoder_depth": 1, "dim": 32, "depth": 1, "ffn_dim": 64, "num_heads": 2,
         "encoder_heads": 2}


@pytest.fixture(scope="module")
def caption_run(tmp_path_factory):
    """Two epochs of a tiny captioner on 96 scenes (eval re-generates the same 8 validation scenes)."""
    from vitlab.data import captions
    from vitlab.train.run import TrainConfig, run_training

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cap")
    saved = captions.SCENES_TRAIN, captions.SCENES_VAL
    captions.SCENES_TRAIN, captions.SCENES_VAL = 96, 8
    try:
        run_training(TrainConfig(model="caption_vit_micro_patch8_64", data="scenes", epochs=2, batch_size=16,
                                 lr=3e-3, warmup_epochs=0, out=str(root / "run"), model_args=SMALL))
        images = []
        for i in range(2):
            path = root / f"x{i}.png"
            Image.fromarray(np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
            images.append(str(path))
        yield root / "run", images
    finally:
        captions.SCENES_TRAIN, captions.SCENES_VAL = saved


@pytest.fixture(scope="module")
def translation_run(tmp_path_factory):
    from vitlab.data.parallel import english_french
    from vitlab.train.run import TrainConfig, run_training

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tr")
    pairs = [english_french(n) for n in range(240)]
    (root / "en.txt").write_text("\n".join(s for s, _ in pairs) + "\n")
    (root / "fr.txt").write_text("\n".join(t for _, t in pairs) + "\n")
    run_training(TrainConfig(model="transformer_tiny", data=f"parallel:{root / 'en.txt'},{root / 'fr.txt'}",
                             out=str(root / "run"), epochs=4, batch_size=16, lr=2e-3, warmup_epochs=0.5,
                             schedule="noam", model_args={"dim": 32, "ffn_dim": 64, "dropout": 0.0}))
    return root / "run"


def _out(capsys, argv: list[str]) -> list[str]:
    capsys.readouterr()
    assert main(argv) == 0
    return capsys.readouterr().out.split("\n")[:-1]          # one line per print (an empty translation too)


def _library_captions(run, images, beam_size: int, length_penalty: float = 0.6) -> list[str]:
    from vitlab.predict import Predictor
    from vitlab.tasks.captioning import caption_tokenizer, generate_captions

    pred = Predictor.load(str(run), "cpu")
    x = pred.normalize(pred.load_images(images))
    caps = generate_captions(pred.model, x, caption_tokenizer(pred.model), beam_size=beam_size,
                             length_penalty=length_penalty)
    return [f"{p}: {c.text}" for p, c in zip(images, caps)]


def test_captioning_predict_beam_one_is_greedy_and_wider_beams_reach_the_search(caption_run, capsys):
    run, images = caption_run
    greedy = _library_captions(run, images, beam_size=1)
    assert _out(capsys, ["predict", "--checkpoint", str(run), *images, "--beam-size", "1"])[-2:] == greedy
    assert _out(capsys, ["predict", "--checkpoint", str(run), *images])[-2:] == greedy          # default: greedy
    beam = _out(capsys, ["predict", "--checkpoint", str(run), *images, "--beam-size", "3", "--length-penalty",
                         "0"])[-2:]
    assert beam == _library_captions(run, images, beam_size=3, length_penalty=0.0)
    assert all(line.split(": ", 1)[1].strip() for line in beam)                # a caption is printed


def test_captioning_eval_beam_one_equals_the_default_and_beam_three_scores(caption_run, capsys):
    run, _ = caption_run
    base = json.loads("\n".join(_out(capsys, ["eval", "--checkpoint", str(run), "--data", "scenes", "--json"])))
    one = json.loads("\n".join(_out(capsys, ["eval", "--checkpoint", str(run), "--data", "scenes", "--json",
                                             "--beam-size", "1"])))
    three = json.loads("\n".join(_out(capsys, ["eval", "--checkpoint", str(run), "--data", "scenes", "--json",
                                               "--beam-size", "3"])))
    assert one == base and three["task"] == "captioning" and 0.0 <= three["val_bleu4"] <= 1.0
    assert three["val_loss"] == pytest.approx(base["val_loss"])         # teacher-forced: the beam does not enter


def test_translation_predict_beam_one_is_greedy_and_beam_follows_the_options(translation_run, capsys):
    from vitlab.predict import Predictor

    model = Predictor.load(str(translation_run), "cpu").model
    texts = ["ninety-seven", "twelve"]
    greedy = model.translate(texts, beam_size=1)
    assert all(greedy)
    assert _out(capsys, ["predict", "--checkpoint", str(translation_run), *texts, "--beam-size", "1"]) == greedy
    wide = _out(capsys, ["predict", "--checkpoint", str(translation_run), *texts, "--beam-size", "3",
                         "--length-penalty", "1.5"])
    assert wide == model.translate(texts, beam_size=3, length_penalty=1.5) and len(wide) == 2
    r = json.loads("\n".join(_out(capsys, ["eval", "--checkpoint", str(translation_run), "--data",
                                           model.vitlab_meta["data"], "--json", "--beam-size", "2"])))
    assert r["task"] == "translation" and 0.0 <= r["val_exact"] <= 100.0


@pytest.mark.parametrize("argv,message", [
    (["predict", "--beam-size", "2"], "--beam-size: captioning and translation only"),
    (["predict", "--length-penalty", "1"], "--length-penalty: captioning and translation only"),
    (["eval", "--beam-size", "2"], "--beam-size: captioning and translation only"),
    (["eval", "--beam-size", "2", "--protocol", "knn"], "not with --protocol"),
])
def test_a_task_without_decoding_refuses_the_options(tmp_path, capsys, argv, message):
    save_model(vitlab.create_model("vit_micro_patch2_8", num_classes=3), tmp_path / "ck", classes=["a", "b", "c"])
    Image.new("RGB", (8, 8), (200, 30, 30)).save(tmp_path / "a.png")
    full = [argv[0], "--checkpoint", str(tmp_path / "ck")] + (["--data", "digits"] if argv[0] == "eval" else
                                                               [str(tmp_path / "a.png")]) + argv[1:]
    capsys.readouterr()
    assert main(full) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


@pytest.mark.parametrize("argv,message", [
    (["--beam-size", "0"], "--beam-size"),
    (["--beam-size", "1", "--length-penalty", "0.6"], "--length-penalty: beam search only"),
])
def test_bad_widths_are_refused(caption_run, capsys, argv, message):
    run, images = caption_run
    capsys.readouterr()
    try:
        code = main(["predict", "--checkpoint", str(run), images[0], *argv])
    except SystemExit as e:                  # argparse's refusal of 0
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
