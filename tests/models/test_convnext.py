"""ConvNeXt: layer scale starts each block near identity; stochastic depth rises linearly over all blocks."""
from __future__ import annotations

import torch

import vitlab
from vitlab.models.convnext import LayerNorm2d


def test_layer_scale_and_stochastic_depth_schedule():
    model = vitlab.create_model("convnext_tiny", num_classes=5, drop_path_rate=0.3)
    blocks = [b for stage in model.stages for b in stage.blocks]
    assert len(blocks) == 18
    rates = [b.drop_path.p for b in blocks]
    assert rates[0] == 0.0 and abs(rates[-1] - 0.3) < 1e-9
    assert all(abs(b - a - 0.3 / 17) < 1e-9 for a, b in zip(rates, rates[1:]))
    assert all(torch.all(b.gamma == 1e-6) for b in blocks)
    block = blocks[0].eval()
    x = torch.randn(2, 96, 8, 8)
    with torch.no_grad():
        assert (block(x) - x).abs().max() < 1e-3                       # gamma = 1e-6: near identity at init


def test_stochastic_depth_drops_whole_samples_in_training():
    block = vitlab.create_model("convnext_micro_32", num_classes=5, drop_path_rate=0.5).stages[3].blocks[0]
    with torch.no_grad():
        block.gamma.fill_(1.0)
    block.train()
    torch.manual_seed(0)
    x = torch.randn(64, 256, 2, 2)
    with torch.no_grad():
        unchanged = [(block(x)[i] == x[i]).all().item() for i in range(64)]
    assert 10 < sum(unchanged) < 54                                    # about half the samples skip the branch


def test_layernorm2d_normalises_channels():
    ln = LayerNorm2d(8, eps=1e-6)
    x = torch.randn(2, 8, 3, 3)
    ref = torch.nn.functional.layer_norm(x.permute(0, 2, 3, 1), (8,), eps=1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(ln(x), ref)
