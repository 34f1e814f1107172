"""HF transformers <-> vitlab: random-weight reference models saved with save_pretrained, loaded by vitlab, logits
equal in fp32; and back (`--to hf`) through from_pretrained."""
from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

from vitlab import create_model
from vitlab.checkpoint import load_model, load_weights
from vitlab.convert import read_checkpoint
from vitlab.convert.export_hf import save_hf
from vitlab.errors import VitlabError

TOL = 1e-4
transformers = pytest.importorskip("transformers", reason="transformers is the HF reference (dev dependency)")

# (id, HF class, config overrides, input (H, W))
CONFIGS = [
    ("vit_ti16_224", "ViTForImageClassification", {"image_size": 224, "patch_size": 16, "num_labels": 10}, (224, 224)),
    ("vit_s32_384", "ViTForImageClassification",
     {"dim": 384, "heads": 6, "image_size": 384, "patch_size": 32, "num_labels": 7}, (384, 384)),
    ("vit_nonsquare_96x64_nobias", "ViTForImageClassification",
     {"image_size": [96, 64], "patch_size": 16, "num_labels": 5, "qkv_bias": False, "layer_norm_eps": 1e-6}, (96, 64)),
    ("vitmodel_pooler", "ViTModel", {"image_size": 64, "patch_size": 16}, (64, 64)),
    ("deit_distilled_teacher", "DeiTForImageClassificationWithTeacher",
     {"image_size": 64, "patch_size": 16, "num_labels": 6}, (64, 64)),
    ("deit_one_head", "DeiTForImageClassification", {"image_size": 64, "patch_size": 16, "num_labels": 6}, (64, 64)),
]


def logits(model, x, **kw):
    with torch.no_grad():
        out = model(pixel_values=x, **kw) if isinstance(model, transformers.PreTrainedModel) else model(x)
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict) and not isinstance(model, transformers.PreTrainedModel):   # our distilled DeiT
        return out["logits"]
    return out.logits if getattr(out, "logits", None) is not None else out.pooler_output


def _make(hf_model, cls, overrides):
    kw = dict(overrides)
    dims = {k: kw.pop(k) for k in ("dim", "heads") if k in kw}
    return hf_model(cls, **dims, **kw)


@pytest.mark.parametrize("cid,cls,overrides,size", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_hf_to_vitlab_and_back(hf_model, tmp_path, cid, cls, overrides, size):
    ref = _make(hf_model, cls, overrides)
    ref.save_pretrained(tmp_path / "hf")
    x = torch.randn(2, 3, *size)
    expected = logits(ref, x)

    ours = load_model(tmp_path / "hf")
    torch.testing.assert_close(logits(ours, x), expected, atol=TOL, rtol=0)
    assert ours.cfg.norm_eps == ref.config.layer_norm_eps
    assert all(m.eps == ref.config.layer_norm_eps for m in ours.modules() if isinstance(m, torch.nn.LayerNorm))
    assert ours.cfg.qkv_bias == ref.config.qkv_bias

    save_hf(ours, tmp_path / "back")
    on_disk = load_file(str(tmp_path / "hf" / "model.safetensors"))
    written = load_file(str(tmp_path / "back" / "model.safetensors"))
    assert set(written) == set(on_disk)                 # the names transformers itself writes
    back = getattr(transformers, cls).from_pretrained(tmp_path / "back").eval()
    torch.testing.assert_close(logits(back, x), expected, atol=TOL, rtol=0)


def test_vitlab_model_exports_to_hf(tmp_path):
    """A model born in vitlab (timm-style eps 1e-6, ImageNet normalisation) loads in transformers unchanged."""
    torch.manual_seed(0)
    ours = create_model("deit_tiny_distilled_patch16_224", depth=2, num_classes=4, img_size=64).eval()
    save_hf(ours, tmp_path)
    ref = transformers.AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert type(ref).__name__ == "DeiTForImageClassificationWithTeacher"
    assert ref.config.layer_norm_eps == 1e-6
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(logits(ref, x), logits(ours, x), atol=TOL, rtol=0)
    pre = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert pre["image_mean"] == pytest.approx([0.485, 0.456, 0.406])


def test_transformers5_in_memory_names_and_pickled_bin(hf_model, tmp_path):
    """Weights saved from `model.state_dict()` in transformers >= 5 (`vit.layers.N.attention.q_proj`), and the old
    pytorch_model.bin, load like save_pretrained's safetensors."""
    ref = hf_model("ViTForImageClassification", image_size=32, patch_size=8, num_labels=3)
    ref.save_pretrained(tmp_path / "disk")
    (tmp_path / "mem").mkdir()
    (tmp_path / "mem" / "config.json").write_text((tmp_path / "disk" / "config.json").read_text())
    mem_sd = ref.state_dict()
    assert any(".layers.0.attention.q_proj." in k for k in mem_sd)
    save_file({k: v.contiguous() for k, v in mem_sd.items()}, str(tmp_path / "mem" / "model.safetensors"))
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "disk" / "config.json").read_text())
    torch.save(load_file(str(tmp_path / "disk" / "model.safetensors")), tmp_path / "bin" / "pytorch_model.bin")
    x = torch.randn(2, 3, 32, 32)
    for sub in ("mem", "bin"):
        torch.testing.assert_close(logits(load_model(tmp_path / sub), x), logits(ref, x), atol=TOL, rtol=0)


def test_qkv_fused_in_q_k_v_order(hf_model, tmp_path):
    ref = hf_model("ViTModel", image_size=32, patch_size=8)
    ref.save_pretrained(tmp_path)
    sd = read_checkpoint(tmp_path).state_dict
    disk = load_file(str(tmp_path / "model.safetensors"))
    qkv = sd["blocks.1.attn.qkv.weight"]
    for i, part in enumerate(("query", "key", "value")):
        assert torch.equal(qkv[i * 192:(i + 1) * 192], disk[f"encoder.layer.1.attention.attention.{part}.weight"])


@pytest.mark.parametrize("cls", ["ViTForImageClassification", "DeiTForImageClassificationWithTeacher"])
@pytest.mark.parametrize("size", [(384, 384), (224, 320)])
def test_resampled_position_embedding_matches_hf_interpolation(hf_model, tmp_path, cls, size):
    """Fine-tuning size: vitlab at the new size == transformers' own interpolate_pos_encoding (bicubic, no AA)."""
    ref = hf_model(cls, image_size=224, patch_size=16, num_labels=5)
    ref.save_pretrained(tmp_path)
    x = torch.randn(2, 3, *size)
    expected = logits(ref, x, interpolate_pos_encoding=True)
    ours = load_model(tmp_path, img_size=size)
    assert ours.cfg.img_size == size or ours.cfg.img_size == size[0]
    torch.testing.assert_close(logits(ours, x), expected, atol=TOL, rtol=0)
    # The table itself equals transformers' interpolation; timm's default (antialiased bicubic) would not.
    base = ref.vit if hasattr(ref, "vit") else ref.deit
    n_new = ours.pos_embed.shape[1]
    with torch.no_grad():
        hf_table = base.embeddings.interpolate_pos_encoding(torch.zeros(1, n_new, 192), *size)
    torch.testing.assert_close(ours.pos_embed.detach(), hf_table, atol=1e-6, rtol=0)
    ckpt = read_checkpoint(tmp_path)
    assert (ckpt.interpolation, ckpt.antialias) == ("bicubic", False)
    timm_style = create_model(ckpt.model, **{**ckpt.model_args, "img_size": size})
    load_weights(timm_style, ckpt.state_dict, interpolation="bicubic", antialias=True)
    assert (timm_style.pos_embed.detach() - hf_table).abs().max() > 1e-3


def test_new_num_classes_gives_fresh_head_with_notice(hf_model, tmp_path, caplog):
    ref = hf_model("ViTForImageClassification", image_size=32, patch_size=8, num_labels=10)
    ref.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger="vitlab"):
        ours = load_model(tmp_path, num_classes=3)
    notices = [r.getMessage() for r in caplog.records if "head" in r.getMessage()]
    assert len(notices) == 1 and "head.weight" in notices[0]
    x = torch.randn(2, 3, 32, 32)
    assert logits(ours, x).shape == (2, 3)
    with torch.no_grad():       # everything below the head was loaded
        torch.testing.assert_close(ours.forward_features(x), ref.vit(pixel_values=x).last_hidden_state,
                                   atol=TOL, rtol=0)


def test_create_model_with_checkpoint_and_class_names(hf_model, tmp_path):
    ref = hf_model("ViTForImageClassification", image_size=32, patch_size=8, num_labels=2,
                   id2label={0: "cat", 1: "dog"}, label2id={"cat": 0, "dog": 1})
    ref.save_pretrained(tmp_path)
    ours = create_model("vit_tiny_patch16_224", checkpoint_path=tmp_path)
    assert ours.vitlab_meta["classes"] == ["cat", "dog"]
    assert ours.cfg.mean == (0.5, 0.5, 0.5) or list(ours.cfg.mean) == [0.5, 0.5, 0.5]
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(logits(ours, x), logits(ref, x), atol=TOL, rtol=0)


def test_unsupported_hf_directories_are_refused(hf_model, tmp_path):
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(VitlabError, match=r"model_type 'bert' is not supported \(supported: .*vit"):
        read_checkpoint(tmp_path / "bert")
    ref = hf_model("ViTForMaskedImageModeling", image_size=32, patch_size=8, encoder_stride=8)
    ref.save_pretrained(tmp_path / "mim")
    with pytest.raises(VitlabError, match="does not know: .*decoder"):
        read_checkpoint(tmp_path / "mim")
    gelu_new = hf_model("ViTModel", image_size=32, patch_size=8, hidden_act="gelu_new")
    gelu_new.save_pretrained(tmp_path / "act")
    with pytest.raises(VitlabError, match="hidden_act 'gelu_new'"):
        read_checkpoint(tmp_path / "act")


def test_unknown_format_names_supported_ones(tmp_path):
    (tmp_path / "weights.onnx").write_bytes(b"\x00")
    with pytest.raises(VitlabError, match="unknown checkpoint format") as err:
        read_checkpoint(tmp_path / "weights.onnx")
    for supported in ("vitlab directory", "HF transformers directory", "timm/PyTorch state dict", "Google ViT .npz"):
        assert supported in str(err.value)


def test_export_refuses_what_transformers_cannot_express(tmp_path):
    gap = create_model("vit_micro_patch4_32", class_token=False, pool="avg")
    with pytest.raises(VitlabError, match="no equivalent of no class token, pool='avg'"):
        save_hf(gap, tmp_path)


def test_cli_converts_an_hf_directory_both_ways(hf_model, tmp_path, capsys):
    from vitlab.cli import main as cli_main

    ref = hf_model("DeiTForImageClassificationWithTeacher", image_size=32, patch_size=8, num_labels=4)
    ref.save_pretrained(tmp_path / "hf")
    assert cli_main(["convert", str(tmp_path / "hf"), str(tmp_path / "ours")]) == 0
    assert "deit_tiny_distilled_patch16_224" in capsys.readouterr().out
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["format"] == "vitlab"
    assert cli_main(["convert", str(tmp_path / "ours"), str(tmp_path / "back"), "--to", "hf"]) == 0
    back = transformers.AutoModelForImageClassification.from_pretrained(tmp_path / "back").eval()
    x = torch.randn(2, 3, 32, 32)
    expected = logits(ref, x)
    torch.testing.assert_close(logits(load_model(tmp_path / "ours"), x), expected, atol=TOL, rtol=0)
    torch.testing.assert_close(logits(back, x), expected, atol=TOL, rtol=0)
