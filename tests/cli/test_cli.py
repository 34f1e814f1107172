"""Every bad input on the command line: one line on stderr, exit code 2, no traceback."""
import subprocess
import sys

import pytest
import torch
from PIL import Image

import vitlab
from vitlab.checkpoint import save_model
from vitlab.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("argv,message", [
    (["train", "--model", "vit_nope"], "unknown model 'vit_nope'"),
    (["train", "--data", "/does/not/exist"], "/does/not/exist"),
    (["train", "--model", "vit_tiny_patch16_224", "--img-size", "100"], "not divisible by the patch size"),
    (["train", "--resume", "/does/not/exist"], "not a checkpoint directory"),
    (["train", "--precision", "fp8"], "--precision must be"),
    (["train", "--model-arg", "novalue"], "--model-arg expects KEY=VALUE"),
    (["train", "--model-arg", "bogus_arg=1"], "bogus_arg"),
    (["eval", "--checkpoint", "/does/not/exist"], "/does/not/exist"),
    (["predict", "--checkpoint", "/does/not/exist", "x.png"], "/does/not/exist"),
    (["info", "vit_nope"], "unknown model"),
    (["models", "zzz*"], "no model matches"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, argv, message):
    if argv[0] == "train" and "--resume" not in argv:
        argv = argv + ["--out", str(tmp_path / "run")]
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_bad_checkpoint_dir_and_bad_image(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "eval", "--checkpoint", str(tmp_path / "empty"))
    assert code == 2 and "unknown checkpoint format" in err
    save_model(vitlab.create_model("vit_micro_patch2_8", num_classes=10), tmp_path / "ck")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    code, _, err = run_cli(capsys, "predict", "--checkpoint", str(tmp_path / "ck"), str(tmp_path / "bad.png"))
    assert code == 2 and "bad.png" in err and err.count("\n") == 1


def test_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--epochs", "many"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "invalid int value: 'many'" in err and err.count("\n") == 1


def test_subprocess_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "vitlab", "info", "vit_tiny_patch16_224", "--img-size", "30"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "vitlab info: error: image size 30x30 is not divisible by the patch size 16"


def test_info_and_models(capsys):
    code, out, _ = run_cli(capsys, "info", "vit_base_patch16_224")
    assert code == 0 and "86,567,656" in out and "17.56" in out and "197 (1 prefix + 196 patches)" in out
    code, out, _ = run_cli(capsys, "models", "vit_*_patch16_224")
    assert code == 0 and "vit_base_patch16_224" in out and "86.57M" in out


def test_predict_prints_top_k_with_class_names(capsys, tmp_path):
    torch.manual_seed(0)
    model = vitlab.create_model("vit_micro_patch2_8", num_classes=3)
    save_model(model, tmp_path / "ck", classes=["cat", "dog", "owl"])
    Image.new("RGB", (20, 12), (200, 30, 30)).save(tmp_path / "a.png")
    code, out, _ = run_cli(capsys, "predict", "--checkpoint", str(tmp_path / "ck"), str(tmp_path / "a.png"),
                           "--top-k", "2")
    assert code == 0
    line = out.strip()
    assert line.startswith(f"{tmp_path / 'a.png'}: ") and line.count(",") == 1
    assert any(n in line for n in ("cat", "dog", "owl"))


def test_predict_in_bf16_gives_the_fp32_probabilities_to_bf16_precision(capsys, tmp_path):
    from vitlab.predict import Predictor

    torch.manual_seed(0)
    save_model(vitlab.create_model("vit_micro_patch2_8", num_classes=3), tmp_path / "ck", classes=["a", "b", "c"])
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    fp32 = Predictor.load(tmp_path / "ck").logits(images)
    bf16 = Predictor.load(tmp_path / "ck", precision="bf16").logits(images)
    assert bf16.dtype == torch.float32                             # logits come back in fp32 either way
    assert 0 < (bf16 - fp32).abs().max() < 0.05                    # bf16 rounding, not another model
    Image.new("RGB", (8, 8), (10, 200, 30)).save(tmp_path / "a.png")
    assert run_cli(capsys, "predict", "--checkpoint", str(tmp_path / "ck"), "--precision", "bf16",
                   str(tmp_path / "a.png"))[0] == 0
    code, _, err = run_cli(capsys, "predict", "--checkpoint", str(tmp_path / "ck"), "--runtime", "onnx",
                           "--precision", "bf16", str(tmp_path / "a.png"))
    assert code == 2 and err.count("\n") == 1 and "--precision fp32" in err
