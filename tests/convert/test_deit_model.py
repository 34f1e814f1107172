"""The DeiT model that DeiT checkpoints load into: distillation token after [CLS], two heads, tuple in training and
the average at test time (Touvron et al. 2021, §4)."""
from __future__ import annotations

import pytest
import torch

from vitlab import create_model, list_models


def test_variants_registered():
    names = list_models("deit_*")
    for size in ("tiny", "small", "base"):
        assert f"deit_{size}_patch16_224" in names and f"deit_{size}_distilled_patch16_224" in names
    assert {"deit_base_patch16_384", "deit_base_distilled_patch16_384"} <= set(names)
    m = create_model("deit_base_distilled_patch16_384", depth=1)
    assert (m.cfg.dim, m.cfg.num_heads, m.cfg.img_size, m.num_prefix_tokens) == (768, 12, 384, 2)
    assert tuple(m.cfg.mean) == (0.485, 0.456, 0.406) and tuple(m.cfg.std) == (0.229, 0.224, 0.225)
    assert m.pos_embed.shape == (1, 2 + 24 * 24, 768)


def test_distilled_heads_are_named_outputs_in_both_modes():
    torch.manual_seed(0)
    m = create_model("deit_tiny_distilled_patch16_224", depth=2, img_size=32, num_classes=5)
    x = torch.randn(3, 3, 32, 32)
    m.train()
    out = m(x)
    assert set(out) == {"logits", "cls_logits", "distillation_logits"}
    cls_logits, dist_logits = out["cls_logits"], out["distillation_logits"]
    assert cls_logits.shape == dist_logits.shape == (3, 5)
    assert not torch.allclose(cls_logits, dist_logits)
    torch.testing.assert_close(out["logits"], (cls_logits + dist_logits) / 2)
    m.eval()
    with torch.no_grad():
        tokens = m.forward_features(x)                                  # (B, [CLS] + [DIST] + N, dim)
        assert tokens.shape == (3, 2 + 4, 192)
        expected = (m.head(tokens[:, 0]) + m.head_dist(tokens[:, 1])) / 2
        evaluated = m(x)
        torch.testing.assert_close(evaluated["logits"], expected)
        torch.testing.assert_close(evaluated["logits"], (cls_logits + dist_logits) / 2, atol=1e-5, rtol=0)


def test_distillation_token_is_second_and_gets_gradients():
    torch.manual_seed(0)
    m = create_model("deit_tiny_distilled_patch16_224", depth=1, img_size=32, num_classes=4).train()
    tokens = m.prefix_tokens(2)
    assert torch.equal(tokens[0], m.cls_token.expand(2, -1, -1))
    assert torch.equal(tokens[1], m.dist_token.expand(2, -1, -1))
    dist_logits = m(torch.randn(2, 3, 32, 32))["distillation_logits"]
    dist_logits.sum().backward()
    assert m.dist_token.grad is not None and m.dist_token.grad.abs().sum() > 0
    assert m.head.weight.grad is None or m.head.weight.grad.abs().sum() == 0   # the dist loss trains head_dist only
    assert "dist_token" in m.no_weight_decay()


@pytest.mark.parametrize("name", ["deit_small_patch16_224", "deit_tiny_distilled_patch16_224"])
def test_without_head(name):
    m = create_model(name, depth=1, img_size=32, num_classes=0).eval()
    with torch.no_grad():
        assert m(torch.randn(2, 3, 32, 32)).shape == (2, m.cfg.dim)


def test_non_distilled_is_a_vit():
    torch.manual_seed(0)
    deit = create_model("deit_tiny_patch16_224", depth=2, img_size=32).eval()
    vit = create_model("vit_tiny_patch16_224", depth=2, img_size=32).eval()
    assert deit.num_prefix_tokens == 1 and deit.head_dist is None and deit.dist_token is None
    vit.load_state_dict(deit.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(deit(x), vit(x))
