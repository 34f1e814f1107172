"""Files written atomically (temporary name, then rename) get the mode a plain open() gives under the umask:
0644 under umask 022, 0600 under 077 — checkpoints, configs, metrics, training state, ONNX graphs and every file
of the explain report, the same as the matplotlib PNGs written directly."""
import os
import stat

import pytest
import torch

import vitlab
from vitlab.checkpoint import save_model
from vitlab.explain import explain
from vitlab.io import current_umask, write_json, write_text
from vitlab.train.state import save_state


@pytest.fixture
def umask():
    old = os.umask(0o022)

    def set_mask(mask: int) -> None:
        os.umask(mask)

    yield set_mask
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def plain_open_mode(directory) -> int:
    """What open(..., "w") gives in this process now: the reference every atomic write must match."""
    with open(directory / "plain.txt", "w") as f:
        f.write("x")
    return mode(directory / "plain.txt")


@pytest.mark.parametrize("mask,expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_keep_the_umask_mode(tmp_path, umask, mask, expected):
    umask(mask)
    assert current_umask() == mask and plain_open_mode(tmp_path) == expected
    model = vitlab.create_model("vit_micro_patch4_32", num_classes=3)
    save_model(model, tmp_path / "ck", classes=["a", "b", "c"])                  # config.json + model.safetensors
    write_json(tmp_path / "metrics.json", {"val_top1": 1.0})
    write_text(tmp_path / "metrics.csv", "epoch\n1\n")
    save_state(tmp_path / "train_state.pt", {"step": 1})
    images = (torch.rand(1, 3, 32, 32) * 255).to(torch.uint8)
    explain(model, images, tmp_path / "report", classes=["a", "b", "c"])
    written = [tmp_path / "ck" / "config.json", tmp_path / "ck" / "model.safetensors", tmp_path / "metrics.json",
               tmp_path / "metrics.csv", tmp_path / "train_state.pt", *sorted((tmp_path / "report").iterdir())]
    assert len(written) > 8
    assert {p.name: oct(mode(p)) for p in written} == {p.name: oct(expected) for p in written}
    assert not list(tmp_path.glob("**/.*.tmp"))                                  # no temporary left


def test_onnx_file_keeps_the_umask_mode(tmp_path, umask):
    pytest.importorskip("onnx", reason="ONNX export needs the onnx package (vitlab[onnx])")
    from vitlab.export import export_onnx

    model = vitlab.create_model("vit_micro_patch4_32", num_classes=3).eval()
    for mask, expected in ((0o022, 0o644), (0o077, 0o600)):
        umask(mask)
        path = export_onnx(model, tmp_path / f"model_{mask:o}.onnx")
        assert mode(path) == expected
