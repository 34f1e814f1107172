"""DETR interop: HF transformers' DetrForObjectDetection (read, written, and as the benchmark reference) and the
facebookresearch/detr state-dict layout, against vitlab's detr_* with the same weights."""
from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")   # a hub look-up otherwise retries for minutes

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import vitlab
from vitlab.checkpoint import convert_checkpoint, load_model
from vitlab.convert import read_checkpoint
from vitlab.convert.export_hf import save_hf
from vitlab.convert.hf_detr import facebook_state_dict, hf_detr_reference
from vitlab.errors import VitlabError

transformers = pytest.importorskip("transformers", reason="transformers is the HF reference (dev dependency)")
TOL = dict(atol=1e-4, rtol=0)


def _randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights AND batch-norm statistics (frozen BN: its running mean/var must matter)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif t.ndim == 1 and "norm" in name and name.endswith("weight"):
                t.copy_(1 + 0.2 * torch.randn(t.shape, generator=g))
            else:
                t.copy_(torch.randn(t.shape, generator=g) * (0.3 if t.ndim == 1 else t[0].numel() ** -0.5))
    return model.eval()


def hf_detr(layer_type: str = "bottleneck", **config) -> nn.Module:
    """A tiny random DetrForObjectDetection, built offline (no timm, no download)."""
    backbone = transformers.ResNetConfig(embedding_size=16, hidden_sizes=[32, 64, 128, 256], depths=[1, 2, 1, 1],
                                         layer_type=layer_type, out_features=["stage4"])
    cfg = transformers.DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=backbone,
                                  d_model=32, encoder_layers=2, decoder_layers=3, encoder_attention_heads=4,
                                  decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=5,
                                  num_labels=3, **config)
    return _randomize_(transformers.DetrForObjectDetection(cfg))


def _outputs_close(ours: nn.Module, hf: nn.Module, x: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    with torch.no_grad():
        a = ours(x) if mask is None else ours(x, mask.bool())
        b = hf(pixel_values=x) if mask is None else hf(pixel_values=x, pixel_mask=mask.long())
    torch.testing.assert_close(a["logits"], b.logits, **TOL)
    torch.testing.assert_close(a["boxes"], b.pred_boxes, **TOL)
    return max((a["logits"] - b.logits).abs().max().item(), (a["boxes"] - b.pred_boxes).abs().max().item())


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    hf = hf_detr(id2label={0: "cat", 1: "dog", 2: "car"}, label2id={"cat": 0, "dog": 1, "car": 2})
    path = tmp_path_factory.mktemp("hf_detr")
    hf.save_pretrained(path)
    return hf, path


def test_hf_directory_loads_with_equal_logits_and_boxes(hf_dir):
    hf, path = hf_dir
    ours = load_model(path)
    assert type(ours).__name__ == "DETR" and ours.vitlab_name == "detr_resnet50"
    assert ours.vitlab_meta["classes"] == ["cat", "dog", "car"]
    c = ours.cfg
    assert (c.num_classes, c.num_queries, c.dim, c.enc_layers, c.dec_layers, c.num_heads, c.ffn_dim) == \
        (3, 5, 32, 2, 3, 4, 64)
    assert dict(c.backbone_args) == {"block": "bottleneck", "layers": [1, 2, 1, 1], "widths": [8, 16, 32, 64],
                                     "stem_width": 16}
    torch.manual_seed(0)
    x = torch.randn(2, 3, 96, 80)                                      # not square, not a multiple of 32
    _outputs_close(ours, hf, x)
    mask = torch.ones(2, 96, 80)
    mask[1, :, 56:] = 0                                                # image 1 padded on the right
    mask[1, 70:, :] = 0
    _outputs_close(ours, hf, x, mask)


def test_vitlab_convert_of_an_hf_directory_loads_like_the_others(hf_dir, tmp_path):
    hf, path = hf_dir
    convert_checkpoint(path, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model"] == "detr_resnet50" and config["classes"] == ["cat", "dog", "car"]
    _outputs_close(load_model(tmp_path / "out"), hf, torch.randn(1, 3, 64, 64))


def test_transformers_5_in_memory_names_are_read_too(tmp_path):
    hf = hf_detr(layer_type="basic")
    hf.config.save_pretrained(tmp_path)
    sd = {k: v.contiguous() for k, v in hf.state_dict().items()}        # model.backbone.model..., o_proj, mlp.fc1
    assert any(".o_proj." in k for k in sd) and any(k.startswith("model.backbone.model.") for k in sd)
    save_file(sd, str(tmp_path / "model.safetensors"))
    ours = load_model(tmp_path)
    assert ours.vitlab_name == "detr_resnet50" and ours.cfg.backbone_args["block"] == "basic"
    _outputs_close(ours, hf, torch.randn(2, 3, 64, 64))


def test_a_backbone_read_at_an_earlier_stage_drops_the_later_stages(tmp_path):
    backbone = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 32], depths=[1, 1, 1],
                                         layer_type="basic", out_features=["stage2"])
    cfg = transformers.DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=backbone,
                                  d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                                  decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=3,
                                  num_labels=2)
    hf = _randomize_(transformers.DetrForObjectDetection(cfg), seed=4)
    hf.save_pretrained(tmp_path)
    ours = load_model(tmp_path)
    assert ours.backbone.num_stages == 2 and ours.feature_grid(64, 64) == (8, 8)
    _outputs_close(ours, hf, torch.randn(1, 3, 64, 64))


def test_export_to_hf_gives_the_same_detector(tmp_path):
    ours = _randomize_(vitlab.create_model("detr_resnet18", dim=32, num_heads=4, ffn_dim=64, enc_layers=1,
                                           dec_layers=2, num_queries=4, num_classes=2, img_size=64,
                                           backbone_args=dict(block="basic", layers=(1, 1, 1), widths=(8, 16, 32),
                                                              stem_width=8)), seed=5)
    save_hf(ours, tmp_path)
    hf = transformers.AutoModelForObjectDetection.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == "DetrForObjectDetection"
    _outputs_close(ours, hf, torch.randn(2, 3, 64, 64))
    back = load_model(tmp_path)
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in ours.state_dict().items())


def test_export_refuses_what_transformers_cannot_express(tmp_path):
    with pytest.raises(VitlabError, match="stem='small'"):
        save_hf(vitlab.create_model("detr_micro_64"), tmp_path / "a")
    with pytest.raises(VitlabError, match="backbone='vit'"):
        save_hf(vitlab.create_model("detr_vit_micro_64"), tmp_path / "b")


@pytest.mark.parametrize("name", ["detr_micro_64", "detr_resnet18"])
def test_benchmark_reference_is_hf_computing_our_model(name):
    """--compare hf: transformers' DETR with our weights (a small stem put into its ResNet by hand)."""
    kw = dict(enc_layers=1, dec_layers=1) if name == "detr_resnet18" else {}
    ours = _randomize_(vitlab.create_model(name, img_size=64, **kw), seed=6)
    ref = hf_detr_reference(ours)                                       # raises if the outputs differ
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = ours(x), ref(x)
    torch.testing.assert_close(a["logits"], b["logits"], **TOL)
    torch.testing.assert_close(a["boxes"], b["boxes"], **TOL)


def test_unknown_weights_are_named(hf_dir, tmp_path):
    hf, _ = hf_dir
    hf.save_pretrained(tmp_path)
    from safetensors.torch import load_file

    sd = load_file(str(tmp_path / "model.safetensors"))
    sd["model.extra.weight"] = torch.zeros(1)
    save_file(sd, str(tmp_path / "model.safetensors"))
    with pytest.raises(VitlabError, match=r"does not know: model\.extra\.weight"):
        read_checkpoint(tmp_path)


def test_learned_positions_are_refused(tmp_path):
    hf_detr(position_embedding_type="learned").save_pretrained(tmp_path)
    with pytest.raises(VitlabError, match="position_embedding_type 'learned'"):
        read_checkpoint(tmp_path)


# --- facebookresearch/detr ---------------------------------------------------------------------------------------
DETR_KEYS = ["backbone.0.body.conv1.weight", "backbone.0.body.bn1.running_var",
             "backbone.0.body.layer1.0.conv1.weight", "backbone.0.body.layer2.0.downsample.0.weight",
             "input_proj.weight", "query_embed.weight",
             "transformer.encoder.layers.0.self_attn.in_proj_weight",
             "transformer.encoder.layers.0.self_attn.out_proj.weight", "transformer.encoder.layers.0.linear1.weight",
             "transformer.encoder.layers.0.norm2.bias", "transformer.decoder.layers.1.multihead_attn.in_proj_bias",
             "transformer.decoder.layers.1.norm3.weight", "transformer.decoder.norm.weight",
             "class_embed.weight", "bbox_embed.layers.2.weight"]


def test_facebookresearch_layout_round_trips(tmp_path):
    ours = _randomize_(vitlab.create_model("detr_resnet50", dim=32, num_heads=8, ffn_dim=64, enc_layers=1,
                                           dec_layers=2, num_queries=4, num_classes=2, img_size=64,
                                           backbone_args=dict(block="bottleneck", layers=(1, 1), widths=(8, 16),
                                                              stem_width=8)), seed=7)
    sd = facebook_state_dict(ours)
    assert set(DETR_KEYS) <= set(sd)
    assert not any("num_batches_tracked" in k for k in sd)
    path = tmp_path / "detr.pth"
    torch.save({"model": sd}, path)                                     # as detr's checkpoints are saved
    back = load_model(path)
    assert back.vitlab_meta["source_format"] == "facebookresearch-detr" and back.cfg.num_heads == 8
    assert back.state_dict().keys() == ours.state_dict().keys()
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in ours.state_dict().items())
    # in_proj rows are (q, k, v): the layout's cross-attention, run as torch's MultiheadAttention, is ours
    mha = nn.MultiheadAttention(32, 8, batch_first=True).eval()
    prefix = "transformer.decoder.layers.1.multihead_attn."
    mha.load_state_dict({k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)})
    x, memory = torch.randn(2, 4, 32), torch.randn(2, 6, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours.decoder.layers[1].cross_attn(x, memory), mha(x, memory, memory)[0],
                                   atol=1e-5, rtol=1e-5)


def test_facebookresearch_heads_come_from_the_named_model(tmp_path):
    ours = vitlab.create_model("detr_micro_64", enc_layers=1, dec_layers=1)
    torch.save({"model": facebook_state_dict(ours)}, tmp_path / "m.pth")
    assert read_checkpoint(tmp_path / "m.pth").model_args["num_heads"] == 8       # detr's default
    ckpt = read_checkpoint(tmp_path / "m.pth", model="detr_micro_64")
    assert ckpt.model == "detr_micro_64" and ckpt.model_args["num_heads"] == 4


def test_transformers_auxiliary_loss_decoder_is_reproduced(tmp_path):
    """transformers' DETR with auxiliary_loss=True feeds each decoder layer the previous layer's output through
    the final LayerNorm (detr does not): read from such a directory, ours does the same."""
    hf = hf_detr(auxiliary_loss=True)
    hf.save_pretrained(tmp_path)
    ours = load_model(tmp_path)
    assert ours.cfg.decoder_norm_between
    _outputs_close(ours, hf, torch.randn(2, 3, 64, 64))
    plain = vitlab.create_model(ours.vitlab_name, **{**ours.vitlab_args, "decoder_norm_between": False}).eval()
    plain.load_state_dict(ours.state_dict())
    with torch.no_grad():
        x = torch.randn(1, 3, 64, 64)
        assert not torch.allclose(plain(x)["logits"], ours(x)["logits"], atol=1e-3)
