"""Hybrid ViT (§3.1): the token sequence is a 1x1 projection of the ResNet feature map, in row-major order."""
from __future__ import annotations

import torch

import vitlab


def test_tokens_are_projected_backbone_features():
    model = vitlab.create_model("vit_micro_r8_s4_32", num_classes=5).eval()
    embed = model.patch_embed
    assert embed.grid_size == (8, 8) and model.pos_embed.shape == (1, 1 + 64, 64)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        fmap = embed.backbone.forward_features(x)                      # (2, 128, 8, 8)
        w, b = embed.proj.weight[:, :, 0, 0], embed.proj.bias          # patch size 1: a linear map per position
        expect = torch.einsum("bchw,dc->bhwd", fmap, w).reshape(2, 64, -1) + b
        torch.testing.assert_close(embed(x), expect)


def test_r26_layout():
    with torch.device("meta"):
        model = vitlab.create_model("vit_small_r26_s32_224")
    bb = model.patch_embed.backbone
    assert type(bb).__name__ == "BiTResNet" and tuple(bb.cfg.layers) == (2, 2, 2, 2) and bb.cfg.stride == 32
    assert model.patch_embed.num_patches == 49 and model.pos_embed.shape == (1, 50, 384)
