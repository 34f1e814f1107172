"""MViT: pooling attention against full attention and a hand computation, the multiscale schedule, sizes, training."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vitlab
from vitlab.bench.flops import model_summary
from vitlab.errors import VitlabError
from vitlab.layers import Attention, explicit_attention
from vitlab.models.mvit import PoolingAttention

DIM, HEADS = 32, 2


def test_pooling_attention_without_pooling_is_full_attention():
    attn = PoolingAttention(DIM, HEADS, (4, 4), q_stride=1, kv_stride=1, kernel=1, mode="max").eval()
    full = Attention(DIM, HEADS).eval()
    full.load_state_dict({k: v for k, v in attn.state_dict().items() if k.split(".")[0] in ("qkv", "proj")})
    x = torch.randn(2, 17, DIM)
    torch.testing.assert_close(attn(x), full(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fused", [True, False])
def test_conv_pooling_attention_equals_hand_computation(fused):
    """Q pooled by 2, K/V by 2: depthwise 3x3 conv per head channel, LayerNorm with [CLS] re-attached, softmax."""
    torch.manual_seed(0)
    attn = PoolingAttention(DIM, HEADS, (6, 6), q_stride=2, kv_stride=2, kernel=3, mode="conv").eval()
    attn.fused = fused
    x = torch.randn(2, 1 + 36, DIM)
    d = DIM // HEADS
    q, k, v = attn.qkv(x).reshape(2, 37, 3, HEADS, d).permute(2, 0, 3, 1, 4).unbind(0)

    def pool(t, conv, norm):
        grid = t[:, :, 1:].reshape(2 * HEADS, 6, 6, d).permute(0, 3, 1, 2)
        pooled = F.conv2d(grid, conv.weight, stride=2, padding=1, groups=d)                   # (B*h, d, 3, 3)
        pooled = pooled.flatten(2).transpose(1, 2).reshape(2, HEADS, 9, d)
        return F.layer_norm(torch.cat([t[:, :, :1], pooled], 2), (d,), norm.weight, norm.bias, norm.eps)

    out, w = explicit_attention(pool(q, attn.pool_q, attn.norm_q), pool(k, attn.pool_k, attn.norm_k),
                                pool(v, attn.pool_v, attn.norm_v))
    assert w.shape == (2, HEADS, 10, 10) and attn.out_grid == (3, 3)
    expected = attn.proj(out.transpose(1, 2).reshape(2, 10, DIM))
    torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-5)


def test_multiscale_schedule_expands_channels_and_pools_tokens():
    model = vitlab.create_model("mvit_micro_32", num_classes=10)
    blocks = list(model.blocks)
    dims = [b.norm1.normalized_shape[0] for b in blocks]
    heads = [b.attn.num_heads for b in blocks]
    grids = [b.attn.grid_size for b in blocks]
    assert dims == [64, 64, 128, 128, 256, 256]                  # doubled by the MLP of the block before a stage
    assert heads == [2, 2, 4, 4, 8, 8]
    assert grids == [(16, 16), (16, 16), (16, 16), (8, 8), (8, 8), (4, 4)]
    assert [b.attn.kv_grid for b in blocks] == [(8, 8), (8, 8), (16, 16), (8, 8), (8, 8), (4, 4)]
    x = torch.randn(2, 3, 32, 32)
    assert model.forward_features(x).shape == (2, 1 + 16, 256)


def test_bad_stage_starts_are_refused():
    with pytest.raises(VitlabError, match=r"MViT stage_starts \(0, 3\) must lie in 1\.\.5"):
        vitlab.create_model("mvit_micro_32", stage_starts=(0, 3))


def test_mvit_base_16_matches_the_paper():
    s = model_summary("mvit_base_16_224")             # MViT-B-16: 36.6M parameters, 7.8 GFLOPs (Fan et al. Table)
    assert abs(s["params"] / 1e6 - 36.6) / 36.6 < 0.02
    assert abs(s["gflops"] - 7.8) / 7.8 < 0.02


def test_micro_mvit_trains_on_cpu_and_fused_equals_explicit(fit_batch):
    torch.manual_seed(0)
    model = vitlab.create_model("mvit_micro_32", num_classes=4, img_size=16, embed_dim=32, depth=4, stage_starts=(2,),
                                drop_path_rate=0.0)
    x, y = torch.randn(8, 3, 16, 16), torch.arange(8) % 4
    losses, grads = fit_batch(model, x, y)
    assert set(grads) == {n for n, _ in model.named_parameters()}
    assert losses[-1] < 0.5 * losses[0]
    model.eval()
    with torch.no_grad():
        fused = model(x)
        for m in model.modules():
            if isinstance(m, Attention):
                m.fused = False
        torch.testing.assert_close(model(x), fused, rtol=1e-4, atol=1e-5)
