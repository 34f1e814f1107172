"""CLIP: named outputs, temperature, the symmetric InfoNCE loss (hand computation and HF's CLIPModel), and HF /
OpenAI interop with logits equal to transformers' on random weights."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import vitlab
from vitlab.models.clip import clip_loss

from .helpers import write_tiny_clip_vocab

transformers = pytest.importorskip("transformers")


def test_named_outputs_normalised_and_temperature():
    torch.manual_seed(0)
    m = vitlab.create_model("clip_micro_patch8_64", vocab_size=20).eval()
    ids = torch.tensor([[1, 5, 6, 2, 0], [1, 7, 2, 0, 0]])
    out = m(torch.randn(3, 3, 64, 64), ids)
    assert out["logits_per_image"].shape == (3, 2)
    torch.testing.assert_close(out["logits_per_text"], out["logits_per_image"].t())
    torch.testing.assert_close(out["image_embeds"].norm(dim=-1), torch.ones(3))
    assert m.scale().item() == pytest.approx(1 / 0.07, rel=1e-5)
    cos = out["image_embeds"] @ out["text_embeds"].t()
    torch.testing.assert_close(out["logits_per_image"], cos / 0.07, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        m.logit_scale.fill_(math.log(1000.0))
    assert m.scale().item() == pytest.approx(100.0)            # clamped
    # features come from the end-of-text token: changing a pad after it changes nothing, a word before it does
    a = m.encode_text(torch.tensor([[1, 5, 2, 0]]))
    torch.testing.assert_close(a, m.encode_text(torch.tensor([[1, 5, 2, 9]])))
    assert not torch.allclose(a, m.encode_text(torch.tensor([[1, 6, 2, 0]])))


def test_loss_equals_hand_computation():
    torch.manual_seed(1)
    logits = torch.randn(4, 4) * 3
    i2t = -sum(math.log(math.exp(logits[i, i]) / sum(math.exp(logits[i, j]) for j in range(4))) for i in range(4)) / 4
    t2i = -sum(math.log(math.exp(logits[i, i]) / sum(math.exp(logits[j, i]) for j in range(4))) for i in range(4)) / 4
    assert clip_loss(logits).item() == pytest.approx((i2t + t2i) / 2, rel=1e-5)
    # identical captions 0 and 1: each image's target is uniform over both
    same = torch.eye(4, dtype=torch.bool)
    same[0, 1] = same[1, 0] = True
    soft = same.float() / same.float().sum(1, keepdim=True)
    hand = (-(soft * logits.log_softmax(1)).sum(1).mean() - (soft * logits.t().log_softmax(1)).sum(1).mean()) / 2
    assert clip_loss(logits, same).item() == pytest.approx(hand.item(), rel=1e-5)


def _hf_clip(tmp_path: Path, eos_token_id: int | None = None):
    from transformers import CLIPConfig, CLIPModel

    tmp_path.mkdir(parents=True, exist_ok=True)
    vocab = write_tiny_clip_vocab(tmp_path)
    torch.manual_seed(0)
    V = len(vocab)
    cfg = CLIPConfig(text_config=dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, max_position_embeddings=16, bos_token_id=V - 2,
                                      eos_token_id=V - 1 if eos_token_id is None else eos_token_id,
                                      pad_token_id=V - 1),
                     vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, image_size=32, patch_size=8),
                     projection_dim=24, logit_scale_init_value=2.0)
    hf = CLIPModel(cfg).eval()
    hf.save_pretrained(tmp_path)
    return hf


@pytest.mark.parametrize("legacy_eos", [False, True], ids=["eos-token", "legacy-eos-2-argmax"])
def test_hf_directory_loads_with_equal_logits_and_loss(tmp_path, legacy_eos):
    from vitlab.checkpoint import load_model
    from vitlab.tasks.contrastive import clip_tokenizer

    hf = _hf_clip(tmp_path, eos_token_id=2 if legacy_eos else None)
    ours = load_model(tmp_path)
    tok = clip_tokenizer(ours)                                     # read from the directory's vocab.json + merges
    ids, _ = tok.encode_batch(["a photo of a cat", "cat", "of photo"])   # realistic: bos first, eos the largest id
    assert ids[0, 0] == tok.bos_id and ids.max() == tok.eos_id == len(json.loads((tmp_path / "vocab.json")
                                                                                 .read_text())) - 1
    torch.manual_seed(1)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=x, return_loss=True)
        out = ours(x, ids)
    torch.testing.assert_close(out["logits_per_image"], ref.logits_per_image, atol=1e-4, rtol=0)
    torch.testing.assert_close(out["text_embeds"], ref.text_embeds, atol=1e-5, rtol=0)
    assert clip_loss(out["logits_per_image"]).item() == pytest.approx(ref.loss.item(), abs=1e-5)


def test_export_to_hf_and_back_folds_the_patch_bias(tmp_path):
    from transformers import CLIPModel

    from vitlab.checkpoint import convert_checkpoint, load_model

    _hf_clip(tmp_path / "src")
    ours = load_model(tmp_path / "src")
    with torch.no_grad():
        ours.visual.patch_embed.proj.bias.normal_()             # our patch bias, which HF lacks: folded on export
    vitlab.checkpoint.save_model(ours, tmp_path / "ours", task_extras=ours.vitlab_meta["task_extras"])
    convert_checkpoint(tmp_path / "ours", tmp_path / "hf", to="hf")
    back = CLIPModel.from_pretrained(tmp_path / "hf").eval()
    V = ours.cfg.vocab_size                                     # bos V - 2, eos V - 1
    ids = torch.tensor([[V - 2, 70, V - 1, V - 1], [V - 2, 71, 72, V - 1]])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=ids, pixel_values=x).logits_per_image,
                                   ours(x, ids)["logits_per_image"], atol=1e-4, rtol=0)
    # vitlab convert of the HF directory keeps its tokenizer
    convert_checkpoint(tmp_path / "src", tmp_path / "conv")
    assert "tokenizer" in json.loads((tmp_path / "conv" / "config.json").read_text())["task_extras"]


def test_openai_layout_round_trip(tmp_path):
    from vitlab.checkpoint import load_model
    from vitlab.convert.hf_clip import clip_to_openai

    torch.manual_seed(0)
    m = vitlab.create_model("clip_micro_patch8_64", vocab_size=50, eos_id=49, vision_dim=64, text_dim=64,
                            vision_heads=1, text_heads=1, embed_dim=32, act="quick_gelu", text_pool="argmax").eval()
    with torch.no_grad():
        m.visual.patch_embed.proj.bias.zero_()                  # OpenAI's conv1 has no bias
    sd = clip_to_openai(m)
    for key in ("visual.transformer.resblocks.3.attn.in_proj_weight", "token_embedding.weight",
                "positional_embedding", "text_projection", "logit_scale", "visual.proj", "visual.class_embedding",
                "transformer.resblocks.2.mlp.c_fc.weight", "ln_final.weight"):
        assert key in sd
    assert sd["text_projection"].shape == (64, 32)              # x @ text_projection
    torch.save(sd, tmp_path / "openai.pt")
    back = load_model(tmp_path / "openai.pt")
    ids = torch.tensor([[48, 5, 6, 49, 0], [48, 7, 49, 0, 0]])
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(back(x, ids)["logits_per_image"], m(x, ids)["logits_per_image"])
