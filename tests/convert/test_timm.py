"""timm state dicts. Without timm (it does not import on our CPU machines): the containers, prefixes, file types,
pickle safety and architecture inference. With timm (a GPU machine with the CUDA torch + torchvision): logits
against timm itself for vit_* / deit_* and for an .npz that timm's own Google-npz loader reads."""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from vitlab import create_model
from vitlab.checkpoint import load_model
from vitlab.cli import main as cli_main
from vitlab.convert import read_checkpoint
from vitlab.convert.npz import vit_to_npz_arrays
from vitlab.errors import VitlabError

TOL = 1e-4


def _logits(model, x):
    with torch.no_grad():
        out = model(x)
    return out["logits"] if isinstance(out, dict) else out      # a distilled DeiT's named outputs


@pytest.fixture
def deit_weights(randomize):
    """timm-named weights of a small distilled DeiT (vitlab uses timm's parameter names) and the model."""
    torch.manual_seed(0)
    model = randomize(create_model("deit_tiny_distilled_patch16_224", depth=2, num_classes=5, img_size=64))
    return {k: v.clone() for k, v in model.state_dict().items()}, model


FILES = [("bare", ".safetensors"), ("bare", ".pth"), ("model", ".pth"), ("state_dict", ".pt"),
         ("module_prefix", ".pth"), ("nested", ".pt")]


@pytest.mark.parametrize("container,suffix", FILES, ids=[f"{c}{s}" for c, s in FILES])
def test_state_dict_containers_and_files(tmp_path, deit_weights, container, suffix):
    sd, ref = deit_weights
    obj = {"bare": sd, "model": {"model": sd, "epoch": 3}, "state_dict": {"state_dict": sd, "step": 10},
           "module_prefix": {"model": {f"module.{k}": v for k, v in sd.items()}},
           "nested": {"model": {"state_dict": sd}}}[container]
    path = tmp_path / f"w{suffix}"
    save_file(sd, str(path)) if suffix == ".safetensors" else torch.save(obj, path)
    ours = load_model(path)
    assert ours.vitlab_name == "deit_tiny_distilled_patch16_224"
    assert ours.cfg.norm_eps == 1e-6 and ours.cfg.num_heads == 3 and ours.cfg.depth == 2
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(_logits(ours, x), _logits(ref, x), atol=TOL, rtol=0)
    assert read_checkpoint(path).antialias is True               # timm's resample_abs_pos_embed default


def test_pickled_objects_are_refused_unless_trusted(tmp_path, deit_weights, capsys):
    sd, ref = deit_weights
    path = tmp_path / "train.pth"
    torch.save({"state_dict": sd, "args": argparse.Namespace(lr=0.1)}, path)   # as timm's train.py saves
    with pytest.raises(VitlabError, match=r"refusing to unpickle.*--trust-pickle"):
        load_model(path)
    assert cli_main(["convert", str(path), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--trust-pickle" in err
    assert cli_main(["convert", str(path), str(tmp_path / "out"), "--trust-pickle"]) == 0
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(_logits(load_model(tmp_path / "out"), x), _logits(ref, x), atol=TOL, rtol=0)


def test_heads_come_from_the_width_or_the_model_name(tmp_path, randomize):
    torch.manual_seed(0)
    micro = randomize(create_model("vit_micro_patch4_32", depth=2))       # width 64: no standard head count
    torch.save(micro.state_dict(), tmp_path / "micro.pth")
    with pytest.raises(VitlabError, match="cannot tell the number of attention heads for width 64"):
        load_model(tmp_path / "micro.pth")
    ours = load_model(tmp_path / "micro.pth", name="vit_micro_patch4_32")
    assert ours.cfg.num_heads == 4
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(_logits(ours, x), _logits(micro, x), atol=TOL, rtol=0)


def test_no_embed_class_position_table(tmp_path, randomize):
    """DeiT III style (timm no_embed_class): the table covers the patches only; [CLS] gets no position."""
    torch.manual_seed(0)
    ref = randomize(create_model("vit_tiny_patch16_224", depth=1, img_size=32, num_classes=3))
    with torch.no_grad():
        ref.pos_embed[:, :1] = 0
    sd = dict(ref.state_dict())
    sd["pos_embed"] = sd["pos_embed"][:, 1:]
    torch.save(sd, tmp_path / "w.pth")
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(_logits(load_model(tmp_path / "w.pth"), x), _logits(ref, x), atol=TOL, rtol=0)


def test_refusals(tmp_path, deit_weights):
    sd, _ = deit_weights
    torch.save({"vit.encoder.layer.0.attention.attention.query.weight": torch.zeros(2, 2)}, tmp_path / "hf.bin")
    with pytest.raises(VitlabError, match="HF transformers weights: pass the directory"):
        read_checkpoint(tmp_path / "hf.bin")
    torch.save({**sd, "blocks.0.ls1.gamma": torch.ones(192)}, tmp_path / "ls.pth")
    with pytest.raises(VitlabError, match=r"does not support: blocks\.0\.ls1\.gamma"):
        read_checkpoint(tmp_path / "ls.pth")
    torch.save(sd, tmp_path / "deit.pth")
    with pytest.raises(VitlabError, match="distillation token: name a deit_"):
        read_checkpoint(tmp_path / "deit.pth", model="vit_tiny_patch16_224")
    torch.save({"optimizer": {"lr": 0.1}}, tmp_path / "opt.pth")
    with pytest.raises(VitlabError, match="holds no state dict"):
        read_checkpoint(tmp_path / "opt.pth")


def test_cli_pth_to_hf(tmp_path, deit_weights):
    transformers = pytest.importorskip("transformers", reason="transformers is the HF reference (dev dependency)")
    sd, ref = deit_weights
    torch.save({"model": sd}, tmp_path / "deit.pth")
    assert cli_main(["convert", str(tmp_path / "deit.pth"), str(tmp_path / "hf"), "--to", "hf"]) == 0
    hf = transformers.DeiTForImageClassificationWithTeacher.from_pretrained(tmp_path / "hf").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(hf(pixel_values=x).logits, _logits(ref, x), atol=TOL, rtol=0)


# --- against timm itself (skipped where timm does not import) ----------------------------------------------------
TIMM_CASES = [("vit_tiny_patch16_224", 224), ("vit_small_patch32_384", 384), ("deit_tiny_distilled_patch16_224", 224),
              ("deit_small_patch16_224", 224)]


@pytest.fixture
def timm():
    return pytest.importorskip("timm", reason="timm needs torchvision, which does not import on the CPU machines; "
                                              "runs where the CUDA torch + torchvision are installed")


def _timm_model(timm, randomize, name, **kw):
    torch.manual_seed(0)
    return randomize(timm.create_model(name, pretrained=False, depth=2, num_classes=10, **kw))


@pytest.mark.parametrize("name,size", TIMM_CASES, ids=[c[0] for c in TIMM_CASES])
def test_logits_equal_timm(tmp_path, timm, randomize, name, size):
    ref = _timm_model(timm, randomize, name)
    torch.save({"state_dict": ref.state_dict()}, tmp_path / "w.pth")
    ours = load_model(tmp_path / "w.pth", name=name)
    x = torch.randn(2, 3, size, size)
    torch.testing.assert_close(_logits(ours, x), _logits(ref, x), atol=TOL, rtol=0)

    # fine-tuning size: timm's own checkpoint filter (bicubic, antialiased) == ours at the new size
    from timm.models.vision_transformer import checkpoint_filter_fn

    big = _timm_model(timm, randomize, name, img_size=size + 64)
    big.load_state_dict(checkpoint_filter_fn(ref.state_dict(), big))
    ours_big = load_model(tmp_path / "w.pth", name=name, img_size=size + 64)
    xb = torch.randn(2, 3, size + 64, size + 64)
    torch.testing.assert_close(_logits(ours_big, xb), _logits(big.eval(), xb), atol=TOL, rtol=0)


NPZ_CASES = [("vision_transformer", {}), ("big_vision", {"class_token": False, "global_pool": "avg", "fc_norm": False})]


@pytest.mark.parametrize("layout,kw", NPZ_CASES, ids=[c[0] for c in NPZ_CASES])
def test_npz_read_by_timm_equals_ours(tmp_path, timm, randomize, layout, kw):
    """An .npz written from a timm model's weights: timm's Google-npz loader and ours give the same logits.
    (timm reads big_vision files into models without [CLS], big_vision's 'gap' models.)"""
    ref = _timm_model(timm, randomize, "vit_tiny_patch16_224", **kw)
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    path = tmp_path / "w.npz"
    np.savez(path, **vit_to_npz_arrays(load_model(tmp_path / "w.pth"), layout))
    timm_npz = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2, num_classes=10, **kw)
    timm_npz.load_pretrained(str(path))
    ours = load_model(path)
    x = torch.randn(2, 3, 224, 224)
    torch.testing.assert_close(_logits(ours, x), _logits(timm_npz.eval(), x), atol=TOL, rtol=0)
    torch.testing.assert_close(_logits(ours, x), _logits(ref, x), atol=TOL, rtol=0)


def test_mismatches_are_listed_grouped(tmp_path, deit_weights):
    sd, _ = deit_weights
    broken = {k: v for k, v in sd.items() if not k.endswith("norm2.weight")}         # missing in every block
    broken["blocks.1.mlp.fc1.weight"] = torch.zeros(100, 192)                        # wrong shape
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(VitlabError) as err:
        load_model(tmp_path / "broken.pth")
    msg = str(err.value)
    assert "missing: blocks.{0..1}.norm2.weight" in msg
    assert "shape mismatch: blocks.1.mlp.fc1.weight (100, 192) vs (768, 192)" in msg
    assert "\n" not in msg
