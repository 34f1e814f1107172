"""Every numeric and choice option of every command, given a bad value: exit 2, one line on stderr naming the
option, no traceback, nothing written. The values are refused while the command line is parsed (or, for
`vitlab train`, by TrainConfig.validate before anything loads), so each case takes milliseconds."""
from __future__ import annotations

import argparse

import pytest
from PIL import Image

import vitlab
from vitlab.checkpoint import save_model
from vitlab.cli import build_parser, main

# bad values per kind of option; each is given as --option=VALUE, so "-1" and "-inf" are values, not flags
POSITIVE_INT = ["0", "-1", "1.5", "nan", "inf", "x", ""]
NON_NEGATIVE_INT = ["-1", "1.5", "nan", "x", ""]
POSITIVE_FLOAT = ["0", "-1", "nan", "inf", "-inf", "x", ""]
NON_NEGATIVE_FLOAT = ["-1", "nan", "inf", "x", ""]
FRACTION = ["-0.1", "1.5", "nan", "inf", "x", ""]          # within [0, 1]
OPEN_FRACTION = ["-0.1", "1", "nan", "inf", "x", ""]       # within [0, 1)
CHOICE = ["bogus", ""]
TEXT = [""]
DEVICE = ["gpu", "cuda:x", ""]
INT_LIST = ["0", "x", ",", ""]
NAME_LIST = ["bogus", ",", ""]

# the command line each option is added to ({out} is the directory that must stay empty; {ck}, {img} exist)
BASE = {
    "train": ["train", "--out", "{out}/run"],
    "eval": ["eval", "--checkpoint", "{ck}"],
    "predict": ["predict", "--checkpoint", "{ck}", "{img}", "--out", "{out}/predict"],
    "models": ["models"],
    "info": ["info", "vit_micro_patch2_8"],
    "convert": ["convert", "{ck}", "{out}/converted"],
    "explain": ["explain", "--checkpoint", "{ck}", "{img}", "--out", "{out}/explain"],
    "bench": ["bench", "attention", "--out", "{out}/bench"],
    "export": ["export", "{ck}", "--onnx", "--out", "{out}/model.onnx"],
    "data export": ["data", "export", "scenes", "{out}/scenes"],
    **{f"study {name}": ["study", name, "--out", "{out}/study"]
       for name in ("attention-distance", "complexity", "distill", "robustness", "segmentation", "stn", "all",
                    "dino", "pos-embed", "scaling", "resolution", "shape-texture", "architectures", "hybrid",
                    "video-retrieval", "data-efficiency", "captioning")},
    "serve": ["serve", "--checkpoint", "{ck}", "--port", "0"],
    "zero-shot": ["zero-shot", "--checkpoint", "{ck}"],
}

TABLE: dict[str, dict[str, list[str]]] = {
    "train": {
        "--model": TEXT, "--data": TEXT, "--out": TEXT, "--epochs": POSITIVE_INT, "--stop-at": POSITIVE_INT,
        "--time-limit-s": POSITIVE_FLOAT,
        "--batch-size": POSITIVE_INT, "--lr": POSITIVE_FLOAT, "--weight-decay": NON_NEGATIVE_FLOAT,
        "--warmup-epochs": NON_NEGATIVE_FLOAT, "--min-lr-ratio": FRACTION, "--clip-grad": NON_NEGATIVE_FLOAT,
        "--schedule": CHOICE,
        "--grad-accum": POSITIVE_INT, "--label-smoothing": OPEN_FRACTION, "--img-size": POSITIVE_INT,
        "--drop-path": OPEN_FRACTION, "--checkpoint": TEXT, "--crop-scale": POSITIVE_FLOAT,
        "--randaugment": NON_NEGATIVE_INT, "--mixup": NON_NEGATIVE_FLOAT, "--cutmix": NON_NEGATIVE_FLOAT,
        "--erase": FRACTION, "--ema": OPEN_FRACTION, "--precision": CHOICE, "--device": DEVICE,
        "--seed": NON_NEGATIVE_INT, "--val-fraction": ["0", "1", "-0.5", "nan", "x", ""],
        "--workers": NON_NEGATIVE_INT, "--teacher": TEXT, "--distill": CHOICE, "--distill-tau": POSITIVE_FLOAT,
        "--distill-alpha": FRACTION, "--attention": CHOICE, "--resume": TEXT, "--model-arg": ["novalue"],
        "--ce-weight": NON_NEGATIVE_FLOAT, "--dice-weight": NON_NEGATIVE_FLOAT,
    },
    "eval": {"--checkpoint": TEXT, "--data": TEXT, "--split": CHOICE, "--batch-size": POSITIVE_INT,
             "--device": DEVICE, "--precision": CHOICE, "--protocol": CHOICE, "--beam-size": POSITIVE_INT,
             "--length-penalty": NON_NEGATIVE_FLOAT},
    "predict": {"--checkpoint": TEXT, "images": TEXT, "--top-k": POSITIVE_INT, "--threshold": FRACTION,
                "--out": TEXT, "--device": DEVICE, "--runtime": CHOICE, "--precision": CHOICE, "--text": TEXT,
                "--beam-size": POSITIVE_INT, "--length-penalty": NON_NEGATIVE_FLOAT},
    "zero-shot": {"--checkpoint": TEXT, "--data": TEXT, "--classes": TEXT, "--template": TEXT, "--split": CHOICE,
                  "--device": DEVICE, "--precision": CHOICE, "--ensemble": CHOICE},
    "models": {"pattern": ["", "zzz*"]},
    "info": {"model": TEXT, "--img-size": POSITIVE_INT, "--num-classes": POSITIVE_INT},
    "convert": {"src": TEXT, "dst": TEXT, "--to": CHOICE, "--model": TEXT, "--num-classes": POSITIVE_INT,
                "--img-size": POSITIVE_INT, "--num-heads": POSITIVE_INT},
    "explain": {"images": TEXT, "--checkpoint": TEXT, "--out": TEXT, "--data": TEXT, "--samples": POSITIVE_INT,
                "--class": TEXT, "--layers": ["0", "-1", "x", ""], "--head-fusion": CHOICE,
                "--discard-ratio": OPEN_FRACTION, "--threshold": FRACTION, "--text": TEXT},
    "bench": {"target": TEXT, "--tokens": INT_LIST, "--types": NAME_LIST, "--dim": POSITIVE_INT,
              "--heads": POSITIVE_INT, "--batch": POSITIVE_INT, "--repeats": POSITIVE_INT,
              "--linformer-k": POSITIVE_INT, "--sr-ratio": POSITIVE_INT, "--window": NON_NEGATIVE_INT,
              "--mode": NAME_LIST, "--precision": NAME_LIST, "--batch-size": POSITIVE_INT,
              "--img-size": POSITIVE_INT, "--num-classes": POSITIVE_INT, "--compare": NAME_LIST,
              "--warmup": NON_NEGATIVE_INT, "--json": TEXT, "--device": DEVICE, "--threads": NON_NEGATIVE_INT,
              "--out": TEXT},
    "export": {"checkpoint": TEXT, "--out": TEXT, "--opset": ["0", "8", "99", "nan", "x", ""]},
    "data export": {"source": CHOICE, "dir": TEXT, "--n": POSITIVE_INT, "--n-val": POSITIVE_INT,
                    "--size": ["15", "0", "-1", "nan", "x", ""], "--seed": NON_NEGATIVE_INT,
                    "--max-objects": POSITIVE_INT},
    "study attention-distance": {"--data": TEXT, "--img-size": POSITIVE_INT, "--vit": TEXT,
                                 "--epochs": POSITIVE_INT, "--checkpoint": TEXT, "--eval-images": POSITIVE_INT,
                                 "--train-per-class": POSITIVE_INT, "--seeds": POSITIVE_INT,
                                 "--seed": NON_NEGATIVE_INT, "--out": TEXT},
    "study complexity": {"--sizes": ["32", "0,32", "x", ""], "--batch-size": POSITIVE_INT,
                         "--repeats": POSITIVE_INT, "--seeds": POSITIVE_INT, "--seed": NON_NEGATIVE_INT,
                         "--out": TEXT},
    "study distill": {"--data": TEXT, "--img-size": POSITIVE_INT, "--teacher": TEXT, "--patch": POSITIVE_INT,
                      "--depth": POSITIVE_INT, "--epochs": POSITIVE_INT, "--teacher-epochs": POSITIVE_INT,
                      "--train-per-class": POSITIVE_INT, "--vit-teacher": TEXT, "--teacher-lr": POSITIVE_FLOAT,
                      "--teacher-per-class": POSITIVE_INT, "--objects": CHOICE, "--jobs": POSITIVE_INT,
                      "--seed": NON_NEGATIVE_INT, "--seeds": POSITIVE_INT, "--out": TEXT},
    "study robustness": {"--data": TEXT, "--img-size": POSITIVE_INT, "--vit": TEXT, "--resnet": TEXT,
                         "--epochs": POSITIVE_INT, "--eval-images": POSITIVE_INT, "--attack-images": POSITIVE_INT,
                         "--pgd-steps": POSITIVE_INT, "--repeats": POSITIVE_INT, "--seed": NON_NEGATIVE_INT,
                         "--train-per-class": POSITIVE_INT, "--hybrid": TEXT, "--seeds": POSITIVE_INT,
                         "--vit-epochs": POSITIVE_INT, "--hybrid-epochs": POSITIVE_INT, "--objects": CHOICE,
                         "--jobs": POSITIVE_INT, "--out": TEXT},
    "study all": {"--only": NAME_LIST, "--out": TEXT},
    "study pos-embed": {"--data": TEXT, "--img-size": POSITIVE_INT, "--train-per-class": POSITIVE_INT,
                        "--vit": TEXT, "--epochs": POSITIVE_INT, "--reuse-from": TEXT, "--seeds": POSITIVE_INT,
                        "--seed": NON_NEGATIVE_INT, "--out": TEXT},
    "study scaling": {"--batch-size": POSITIVE_INT, "--repeats": POSITIVE_INT, "--seeds": POSITIVE_INT,
                      "--seed": NON_NEGATIVE_INT, "--out": TEXT},
    "study resolution": {"--data": TEXT, "--train-size": POSITIVE_INT, "--high-size": POSITIVE_INT,
                         "--test-sizes": INT_LIST, "--train-per-class": POSITIVE_INT, "--epochs": POSITIVE_INT,
                         "--finetune-epochs": POSITIVE_INT, "--finetune-lr": POSITIVE_FLOAT,
                         "--margin": NON_NEGATIVE_FLOAT, "--vit": TEXT, "--cpvt": TEXT, "--seeds": POSITIVE_INT,
                         "--seed": NON_NEGATIVE_INT, "--objects": CHOICE, "--jobs": POSITIVE_INT, "--out": TEXT},
    "study shape-texture": {"--classes": ["1", "7", "1.5", "nan", "x", ""], "--img-size": POSITIVE_INT,
                            "--train-per-class": POSITIVE_INT, "--test-per-class": POSITIVE_INT, "--vit": TEXT,
                            "--resnet": TEXT, "--epochs": POSITIVE_INT, "--seeds": POSITIVE_INT,
                            "--seed": NON_NEGATIVE_INT, "--out": TEXT},
    "serve": {"--checkpoint": TEXT, "--host": TEXT, "--port": ["-1", "65536", "1.5", "nan", "x", ""],
              "--max-upload-mb": ["0", "-1", "1025", "nan", "x", ""]},
    "study segmentation": {"--data": TEXT, "--budget": ["0", "-1", "nan", "inf", "x", ""], "--seeds": POSITIVE_INT,
                           "--seed": NON_NEGATIVE_INT, "--batch-size": POSITIVE_INT, "--lr": POSITIVE_FLOAT,
                           "--out": TEXT},
    "study dino": {"--model": TEXT, "--train-images": ["7", "0", "nan", "x", ""], "--epochs": POSITIVE_INT,
                   "--batch-size": ["1", "0", "nan", "x", ""], "--lr": POSITIVE_FLOAT, "--seeds": POSITIVE_INT,
                   "--seed": NON_NEGATIVE_INT, "--out": TEXT, "--model-arg": ["novalue", "teacher_temp=-1"],
                   "--background": CHOICE, "--objects": CHOICE, "--jobs": POSITIVE_INT},
    "study architectures": {"--data": TEXT, "--img-size": POSITIVE_INT, "--train-per-class": POSITIVE_INT,
                            "--epochs": POSITIVE_INT, "--batch-size": POSITIVE_INT, "--repeats": POSITIVE_INT,
                            "--seeds": POSITIVE_INT, "--seed": NON_NEGATIVE_INT, "--objects": CHOICE,
                            "--jobs": POSITIVE_INT, "--out": TEXT},
    "study hybrid": {"--data": TEXT, "--img-size": POSITIVE_INT, "--train-per-class": POSITIVE_INT,
                     "--budgets": ["0", "-1", "nan", "inf", "10,10", "x", ""], "--seeds": POSITIVE_INT,
                     "--seed": NON_NEGATIVE_INT, "--out": TEXT},
    "study stn": {"--data": CHOICE, "--epochs": POSITIVE_INT, "--batch-size": POSITIVE_INT,
                  "--lr": POSITIVE_FLOAT, "--heads": POSITIVE_INT, "--canvas": ["7", "0", "nan", "x", ""],
                  "--crop": ["7", "0", "nan", "x", ""], "--max-rotation": ["-1", "181", "nan", "inf", "x", ""],
                  "--seed": NON_NEGATIVE_INT, "--seeds": POSITIVE_INT, "--out": TEXT},
    "study data-efficiency": {"--fractions": ["0,1", "1.5,1", "0.5", "0.5,0.5", "x", ""],
                              "--train-per-class": POSITIVE_INT, "--val-per-class": POSITIVE_INT,
                              "--epochs": POSITIVE_INT, "--seeds": POSITIVE_INT, "--seed": NON_NEGATIVE_INT,
                              "--lr": POSITIVE_FLOAT, "--objects": CHOICE, "--jobs": POSITIVE_INT, "--out": TEXT},
    "study video-retrieval": {"--data": TEXT, "--frames": ["1", "33", "1.5", "nan", "x", ""], "--epochs": POSITIVE_INT,
                              "--batch-size": ["1", "0", "nan", "x", ""], "--lr": POSITIVE_FLOAT, "--loss": CHOICE,
                              "--margin": ["-1", "2.5", "nan", "inf", "x", ""], "--seed": NON_NEGATIVE_INT,
                              "--seeds": POSITIVE_INT, "--out": TEXT},
    "study captioning": {"--data": TEXT, "--epochs": POSITIVE_INT, "--batch-size": POSITIVE_INT,
                         "--lr": POSITIVE_FLOAT, "--seeds": POSITIVE_INT, "--seed": NON_NEGATIVE_INT, "--out": TEXT},
}

POSITIONAL = {("predict", "images"): 3, ("explain", "images"): 4, ("info", "model"): 1, ("convert", "src"): 1,
              ("convert", "dst"): 2, ("bench", "target"): 1, ("export", "checkpoint"): 1,
              ("data export", "source"): 2, ("data export", "dir"): 3, ("models", "pattern"): 1}

# options whose refusal names them in other words (the benchmark checks --types itself, listing the choices)
NAMED_AS = {("bench", "--types"): "attention type"}

CASES = [(command, option, value) for command, options in TABLE.items() for option, values in options.items()
         for value in values]


def argv_for(command: str, option: str, value: str) -> list[str]:
    """The command's base line with `option` set to `value` (a positional argument replaced in place)."""
    argv = list(BASE[command])
    if (command, option) in POSITIONAL:
        index = POSITIONAL[(command, option)]
        if index < len(argv) and not argv[index].startswith("-"):
            argv[index] = value
        else:
            argv.insert(index, value)
        return argv
    if option in argv:                      # a base option (e.g. --out): replace its value
        i = argv.index(option)
        del argv[i:i + 2]
    return argv + [f"{option}={value}"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    save_model(vitlab.create_model("vit_micro_patch2_8", num_classes=3), root / "ck", classes=["a", "b", "c"])
    Image.new("RGB", (8, 8), (200, 30, 30)).save(root / "a.png")
    return {"ck": str(root / "ck"), "img": str(root / "a.png")}


def test_table_size():
    assert len(CASES) == 1296         # every table change is deliberate: this counts the cases


@pytest.mark.parametrize("command,option,value", CASES, ids=[f"{c}|{o}={v!r}" for c, o, v in CASES])
def test_bad_value_is_refused_in_one_line_before_anything_is_written(command, option, value, files, tmp_path,
                                                                     capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.chdir(out)                  # an empty path would mean the current directory: it must stay empty
    argv = [a.format(out=out, **files) for a in argv_for(command, option, value)]
    try:
        code = main(argv)
    except SystemExit as e:                 # argparse's refusal
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, (argv, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    named = NAMED_AS.get((command, option), option)
    assert not option.startswith("--") or named in lines[0], lines[0]      # the message names the option
    assert list(out.iterdir()) == [], f"{argv} left {list(out.iterdir())}"


def _options(parser: argparse.ArgumentParser, prefix: str = ""):
    """(command, option) of every argument with a type or choices, and of --model-arg."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, f"{prefix} {name}".strip())
        elif action.type is not None or action.choices is not None or action.dest == "model_arg":
            yield prefix, action.option_strings[0] if action.option_strings else action.dest


def test_table_covers_every_numeric_and_choice_option_of_every_command():
    missing = [(command, option) for command, option in _options(build_parser())
               if option not in TABLE.get(command, {})]
    assert missing == []
    commands = {c.split()[0] for c in TABLE}
    assert commands == {"train", "eval", "predict", "models", "info", "convert", "explain", "study", "bench",
                        "export", "data", "serve", "zero-shot"}
