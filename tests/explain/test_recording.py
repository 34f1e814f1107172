import pytest
import torch
import torch.nn.functional as F

from vitlab.errors import VitlabError
from vitlab.explain import attention_maps, record_attention
from vitlab.explain.recording import attention_modules


def reference_attention(model, x):
    """Each block's attention recomputed by hand from its qkv weights, following ViT eqs. 1-3."""
    maps = []
    tokens = model.embed(x)
    for block in model.blocks:
        attn = block.attn
        B, N, C = tokens.shape
        h, d = attn.num_heads, C // attn.num_heads
        y = F.layer_norm(tokens, (C,), block.norm1.weight, block.norm1.bias, block.norm1.eps)
        qkv = y @ attn.qkv.weight.T + attn.qkv.bias                       # (B, N, 3C): q | k | v, heads inside
        q, k, v = (qkv[..., i * C:(i + 1) * C].reshape(B, N, h, d).transpose(1, 2) for i in range(3))
        scores = q @ k.transpose(-1, -2) / d ** 0.5
        weights = torch.exp(scores - scores.amax(-1, keepdim=True))
        weights = weights / weights.sum(-1, keepdim=True)
        maps.append(weights)
        mixed = (weights @ v).transpose(1, 2).reshape(B, N, C) @ attn.proj.weight.T + attn.proj.bias
        tokens = tokens + mixed
        tokens = tokens + block.mlp(block.norm2(tokens))
    return maps


def test_recorded_weights_equal_hand_computation(vit):
    x = torch.randn(2, 3, 16, 16)
    maps = attention_maps(vit, x)
    ref = reference_attention(vit, x)
    assert len(maps) == 3
    for got, want in zip(maps, ref):
        assert got.shape == (2, 4, 17, 17)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(got.sum(-1), torch.ones(2, 4, 17))
    # informative weights: far from uniform (1/17), so the comparison above means something
    assert max(float(m.amax()) for m in maps) > 0.5


def test_recording_leaves_model_unchanged(vit):
    x = torch.randn(2, 3, 16, 16)
    modules = attention_modules(vit)
    modules[1].fused = False                   # a mixed state must come back exactly
    flags = [m.fused for m in modules]
    with torch.no_grad():
        before = vit(x)
    out, _ = record_attention(vit, x)
    with torch.no_grad():
        after = vit(x)
    assert [m.fused for m in modules] == flags == [True, False, True]
    assert all(not m.weights._forward_hooks for m in modules)
    torch.testing.assert_close(out, before, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert not vit.training


def test_recording_restores_on_exception(vit):
    class Boom(RuntimeError):
        pass

    def explode(*_):
        raise Boom

    handle = vit.blocks[2].mlp.register_forward_hook(explode)
    with pytest.raises(Boom):
        attention_maps(vit, torch.randn(1, 3, 16, 16))
    handle.remove()
    modules = attention_modules(vit)
    assert all(m.fused for m in modules)
    assert all(not m.weights._forward_hooks for m in modules)


def test_model_without_attention_is_an_error():
    with pytest.raises(VitlabError, match="no vitlab Attention"):
        attention_maps(torch.nn.Conv2d(3, 4, 3), torch.randn(1, 3, 8, 8))


def test_windowed_attention_is_recorded_per_window():
    import vitlab

    if "swin_micro_patch2_window4_32" not in vitlab.list_models():
        pytest.skip("Swin is not registered")
    torch.manual_seed(0)
    swin = vitlab.create_model("swin_micro_patch2_window4_32", num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = swin(x)
    out, maps = record_attention(swin, x)
    torch.testing.assert_close(out, before, rtol=1e-4, atol=1e-5)
    assert len(maps) == 6                                              # depths (2, 2, 2)
    assert maps[0].shape == (2 * 16, 2, 16, 16)                        # 16x16 grid in 4x4 windows, 2 heads
    assert maps[-1].shape == (2 * 1, 8, 16, 16)                        # 4x4 grid: one window, 8 heads
    for m in maps:
        torch.testing.assert_close(m.sum(-1), torch.ones(m.shape[:-1]))
    assert all(m.fused for m in attention_modules(swin))
