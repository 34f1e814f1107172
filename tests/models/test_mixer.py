"""MLP-Mixer: a block is token mixing across patches then channel mixing across channels (eq. 1)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

import vitlab


def _mlp(x, fc1, fc2):
    return F.linear(F.gelu(F.linear(x, fc1.weight, fc1.bias)), fc2.weight, fc2.bias)


def test_block_equals_the_papers_equations():
    torch.manual_seed(0)
    model = vitlab.create_model("mixer_micro_patch4_32", num_classes=5).eval()
    block = model.blocks[0]
    x = torch.randn(2, 64, 128)                                        # (B, S patches, C channels)
    with torch.no_grad():
        t = block.mlp_tokens
        ln1 = F.layer_norm(x, (128,), block.norm1.weight, block.norm1.bias, 1e-6)
        u = x + _mlp(ln1.transpose(1, 2), t.fc1, t.fc2).transpose(1, 2)     # one MLP over the S patches
        c = block.mlp_channels
        ln2 = F.layer_norm(u, (128,), block.norm2.weight, block.norm2.bias, 1e-6)
        y = u + _mlp(ln2, c.fc1, c.fc2)                                     # one MLP over the C channels
        torch.testing.assert_close(block(x), y)
    assert t.fc1.weight.shape == (64, 64) and c.fc1.weight.shape == (512, 128)   # D_S x S, D_C x C


def test_b16_layout_matches_table_1():
    with torch.device("meta"):
        model = vitlab.create_model("mixer_b16_224")
    assert len(model.blocks) == 12 and model.stem.num_patches == 196
    assert model.blocks[0].mlp_tokens.fc1.weight.shape == (384, 196)
    assert model.blocks[0].mlp_channels.fc1.weight.shape == (3072, 768)
