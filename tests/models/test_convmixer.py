"""ConvMixer: the block's equations, and its locality (one block sees k//2 patches around)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

import vitlab


def test_block_equals_the_papers_equations():
    torch.manual_seed(0)
    model = vitlab.create_model("convmixer_128_4_ks5_p2_32", num_classes=5).eval()
    block = model.blocks[0]
    with torch.no_grad():
        for bn in (block.norm1, block.norm2):                          # non-trivial BN statistics
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 1.5)
        x = torch.randn(2, 128, 16, 16)

        def bn(t, m):
            return F.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

        z = x + bn(F.gelu(F.conv2d(x, block.conv_dw.weight, block.conv_dw.bias, padding=2, groups=128)), block.norm1)
        y = bn(F.gelu(F.conv2d(z, block.conv_pw.weight, block.conv_pw.bias)), block.norm2)
        torch.testing.assert_close(block(x), y)


def test_one_block_is_local():
    model = vitlab.create_model("convmixer_128_4_ks5_p2_32", depth=1, num_classes=5).eval()
    x = torch.randn(1, 3, 32, 32)
    x2 = x.clone()
    x2[..., :2, :2] += 1.0                                             # change the top-left patch only
    with torch.no_grad():
        diff = (model.forward_features(x2) - model.forward_features(x)).abs().amax(dim=(0, 1))   # (16, 16)
    assert diff[:3, :3].min() > 0                                      # within k//2 = 2 patches: changed
    assert diff[3:].max() == 0 and diff[:, 3:].max() == 0              # beyond: untouched


# --- input sizes: a convolutional patch embedding takes what its convolution takes (timm floors too) ----------------
def test_partial_patches_are_dropped_as_the_convolution_does():
    import pytest

    from vitlab.errors import VitlabError as _VitlabError

    torch.manual_seed(0)
    model = vitlab.create_model("convmixer_768_32", dim=16, depth=1, num_classes=3).eval()
    x = torch.randn(1, 3, 96, 96)                                   # 96 = 13 * 7 + 5
    with torch.no_grad():
        assert model.forward_features(x).shape == (1, 16, 13, 13)
        torch.testing.assert_close(model(x), model(x[..., :91, :91]), rtol=0, atol=0)   # the 5-pixel edge is unseen
    with pytest.raises(_VitlabError, match=r"^input is 5x5: smaller than one patch \(7\)$"):
        model(torch.randn(1, 3, 5, 5))
    vit = vitlab.create_model("vit_micro_patch4_32", num_classes=3)          # ViT-style: strict, clear error
    with pytest.raises(_VitlabError, match=r"^input is 30x30 but the model was built for 32x32$"):
        vit(torch.randn(1, 3, 30, 30))
