"""Messages that say what is there: `vitlab convert` names the configuration it built, create_model warns when a
name and its checkpoint disagree, `vitlab info` reads checkpoints and run directories and gives the class count,
top-k appears only below the class count."""
import logging

import pytest
import torch

import vitlab
from vitlab.checkpoint import save_model
from vitlab.cli import main


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def custom(tmp_path):
    """A small model built from the ViT-B entry with other settings (what a converted custom model looks like)."""
    torch.manual_seed(0)
    model = vitlab.create_model("vit_base_patch16_224", dim=64, depth=2, num_heads=2, img_size=32, patch_size=8,
                                num_classes=3)
    save_model(model, tmp_path / "custom", classes=["a", "b", "c"])
    return tmp_path / "custom"


def test_convert_names_the_configuration_it_built(custom, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "convert", custom, tmp_path / "out")
    assert code == 0
    assert out.strip() == (f"{custom} -> {tmp_path / 'out'} (vitlab): VisionTransformer(img_size=32, patch_size=8, "
                           "num_classes=3, dim=64, depth=2, num_heads=2) (vitlab config of vit_base_patch16_224 "
                           "with these changes), 0.11M parameters")
    save_model(vitlab.create_model("vit_micro_patch2_8"), tmp_path / "plain")      # the variant as registered
    code, out, _ = run_cli(capsys, "convert", tmp_path / "plain", tmp_path / "plain_out")
    assert out.strip().endswith("(vitlab): vit_micro_patch2_8, 0.37M parameters")


def test_create_model_warns_when_the_name_is_another_architecture(custom, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="vitlab.registry"):
        model = vitlab.create_model("vit_tiny_patch16_224", checkpoint_path=custom)
    assert model.cfg.dim == 64                                   # the checkpoint's architecture was built
    assert ("vit_tiny_patch16_224: " + str(custom) + " is not that architecture: patch_size 8 (not 16), dim 64 "
            "(not 192), depth 2 (not 12), num_heads 2 (not 3); built the checkpoint's") in caplog.text
    caplog.clear()
    save_model(vitlab.create_model("vit_micro_patch4_32", num_classes=6, drop_path_rate=0.1), tmp_path / "run")
    with caplog.at_level(logging.WARNING, logger="vitlab.registry"):  # the README's case: its own name, no warning
        vitlab.create_model("vit_micro_patch4_32", checkpoint_path=tmp_path / "run")
        vitlab.create_model("vit_micro_patch4_32", checkpoint_path=tmp_path / "run", num_classes=2, img_size=64)
    assert "registry" not in caplog.text                        # (the new head of num_classes=2 has its notice)


def test_info_reads_a_run_directory_and_gives_the_class_count(custom, capsys):
    code, out, _ = run_cli(capsys, "info", custom)
    assert code == 0
    lines = dict(line.split(None, 1) for line in out.strip().splitlines())
    assert lines["model"] == f"vit_base_patch16_224 ({custom / 'config.json'})"
    assert lines["config"].startswith("patch_size=8, dim=64, depth=2, num_heads=2 (the checkpoint's")
    assert lines["input"] == "32x32x3" and lines["classes"] == "3 (the checkpoint's: a, b, c)"
    assert lines["parameters"].startswith(f"{sum(p.numel() for p in vitlab.create_model('vit_base_patch16_224', dim=64, depth=2, num_heads=2, img_size=32, patch_size=8, num_classes=3).parameters()):,}")  # noqa: E501
    code, out, _ = run_cli(capsys, "info", "vit_micro_patch2_8")
    assert "classes      1000 (the variant's default; --num-classes N for another head)" in out
    code, out, _ = run_cli(capsys, "info", "vit_micro_patch2_8", "--num-classes", "7")
    assert "classes      7 (--num-classes)" in out


def test_eval_prints_top5_only_for_more_than_five_classes(tmp_path, capsys):
    torch.manual_seed(0)
    save_model(vitlab.create_model("vit_micro_patch2_8", num_classes=10), tmp_path / "ten",
               classes=[str(i) for i in range(10)])
    code, out, _ = run_cli(capsys, "eval", "--checkpoint", tmp_path / "ten", "--data", "digits")
    assert code == 0 and "top-5" in out
    from vitlab.cli.eval import evaluate_checkpoint

    assert evaluate_checkpoint(str(tmp_path / "ten"), "digits")["num_classes"] == 10
