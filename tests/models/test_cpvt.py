"""CPVT: no position table, the PEG is a residual depthwise conv, and one set of weights runs at any size."""
from __future__ import annotations

import torch

import vitlab


def test_same_weights_run_at_32_and_48_px_without_resampling():
    torch.manual_seed(0)
    m32 = vitlab.create_model("cpvt_micro_patch4_32", num_classes=5).eval()
    m48 = vitlab.create_model("cpvt_micro_patch4_32", num_classes=5, img_size=48).eval()
    assert not any("pos_embed" in k for k in m32.state_dict())
    m48.load_state_dict(m32.state_dict(), strict=True)                 # same keys, same shapes: nothing to resample
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(m32(x), m48(x))                     # the 32-px model takes 48 px as it is
        assert m32(torch.randn(2, 3, 32, 32)).shape == (2, 5)
        tokens = m32.forward_features(x)
    assert tokens.shape == (2, 1 + 12 * 12, 64)


def test_peg_is_a_residual_depthwise_conv_on_the_grid():
    model = vitlab.create_model("cpvt_micro_patch4_32", num_classes=5)
    peg = model.peg
    with torch.no_grad():
        peg.proj.weight.zero_()
        peg.proj.weight[:, 0, 1, 1] = 2.0                              # centre tap only: F(x) = 2x + b
        peg.proj.bias.fill_(0.5)
    x = torch.randn(2, 1 + 4 * 6, 64)                                  # [CLS] + a 4x6 grid
    out = peg(x, (4, 6), num_prefix_tokens=1)
    torch.testing.assert_close(out[:, :1], x[:, :1])                   # class token passes through
    torch.testing.assert_close(out[:, 1:], 3 * x[:, 1:] + 0.5)
    with torch.no_grad():                                              # a right-neighbour tap reads the next column
        peg.proj.weight.zero_()
        peg.proj.weight[:, 0, 1, 2] = 1.0
        peg.proj.bias.zero_()
    grid = x[:, 1:].reshape(2, 4, 6, 64)
    expect = grid.clone()
    expect[:, :, :-1] += grid[:, :, 1:]
    torch.testing.assert_close(peg(x, (4, 6), 1)[:, 1:], expect.reshape(2, 24, 64))


def test_gap_variant_has_no_class_token_and_averages():
    model = vitlab.create_model("cpvt_micro_gap_patch4_32", num_classes=5).eval()
    assert model.cls_token is None and model.num_prefix_tokens == 0
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = model.forward_features(x)
        torch.testing.assert_close(model.forward_head(tokens, pre_logits=True), tokens.mean(dim=1))
