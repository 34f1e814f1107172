"""Efficient attention variants: each equals full attention where it should, and equals a dense-mask (or dense
formula) reference everywhere, on both the fused and the explicit path."""
from __future__ import annotations

import pytest
import torch

import vitlab
from vitlab.checkpoint import load_model, save_model
from vitlab.errors import VitlabError
from vitlab.layers import Attention, explicit_attention
from vitlab.layers.efficient_attention import (
    ATTENTION_TYPES,
    AxialAttention,
    KVPoolAttention,
    LinformerAttention,
    LocalAttention,
    StridedAttention,
    make_attention,
)

DIM, HEADS = 32, 4


def _qkv(attn: Attention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B, N, C = x.shape
    return attn.qkv(x).reshape(B, N, 3, attn.num_heads, C // attn.num_heads).permute(2, 0, 3, 1, 4).unbind(0)


def _out(attn: Attention, o: torch.Tensor) -> torch.Tensor:
    B, h, N, d = o.shape
    return attn.proj(o.transpose(1, 2).reshape(B, N, h * d))


def masked_reference(attn: Attention, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Full attention with a dense boolean mask (heads or 1, N, N): the pattern's definition."""
    q, k, v = _qkv(attn, x)
    return _out(attn, explicit_attention(q, k, v, mask)[0])


def pattern_mask(N: int, p: int, size: int, strided: bool) -> torch.Tensor:
    """(N, N) bool: prefix tokens global; patches i, j (0-based after the prefix) share a block / residue mod size."""
    idx = torch.arange(N) - p
    group = idx % size if strided else idx // size
    mask = group[:, None] == group[None, :]
    mask[:p, :] = True
    mask[:, :p] = True
    return mask


def _pair(variant: Attention, seed: int = 0) -> Attention:
    """A full Attention with the variant's q/k/v and output projections."""
    torch.manual_seed(seed)
    full = Attention(DIM, variant.num_heads)
    full.load_state_dict({k: v for k, v in variant.state_dict().items() if k.split(".")[0] in ("qkv", "proj")})
    return full


@pytest.fixture(params=[True, False], ids=["fused", "explicit"])
def fused(request: pytest.FixtureRequest) -> bool:
    return request.param


@pytest.mark.parametrize("p", [0, 1])
def test_local_window_covering_all_tokens_is_full_attention(p, fused):
    n = 20
    attn = LocalAttention(DIM, HEADS, window=n, num_prefix_tokens=p).eval()
    attn.fused = fused
    x = torch.randn(2, p + n, DIM)
    torch.testing.assert_close(attn(x), _pair(attn)(x), rtol=1e-5, atol=1e-5)


def test_strided_heads_with_stride_1_see_everything():
    """Stride 1 puts all tokens in one residue class: the strided half of the heads is full attention."""
    n = 12
    attn = StridedAttention(DIM, HEADS, window=1).eval()
    x = torch.randn(2, n, DIM)
    q, k, v = _qkv(attn, x)
    got = attn._attend_pattern(q, k, v)[:, HEADS // 2:]
    torch.testing.assert_close(got, explicit_attention(q, k, v)[0][:, HEADS // 2:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("p", [0, 2])
@pytest.mark.parametrize("size", [3, 11])      # 3: 22 tokens do not divide into blocks -> padded last block
def test_local_and_strided_equal_their_dense_mask(p, size, fused):
    n = 22
    torch.manual_seed(0)
    x = torch.randn(2, p + n, DIM)
    local = LocalAttention(DIM, HEADS, window=size, num_prefix_tokens=p).eval()
    local.fused = fused
    torch.testing.assert_close(local(x), masked_reference(local, x, pattern_mask(p + n, p, size, False)),
                               rtol=1e-5, atol=1e-5)
    strided = StridedAttention(DIM, HEADS, window=size, num_prefix_tokens=p).eval()
    strided.fused = fused
    mask = torch.stack([pattern_mask(p + n, p, size, False)] * 2 + [pattern_mask(p + n, p, size, True)] * 2)
    torch.testing.assert_close(strided(x), masked_reference(strided, x, mask), rtol=1e-5, atol=1e-5)


def test_axial_on_a_single_row_is_full_attention(fused):
    attn = AxialAttention(DIM, HEADS, grid_size=(1, 12), num_prefix_tokens=1).eval()
    attn.fused = fused
    x = torch.randn(2, 13, DIM)
    torch.testing.assert_close(attn(x), _pair(attn)(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("p", [0, 1])
def test_axial_equals_row_then_column_dense_formula(p, fused):
    """out = A_col (A_row V) with both softmaxes written as dense masked (N, N) attention."""
    H, W = 3, 5
    attn = AxialAttention(DIM, HEADS, grid_size=(H, W), num_prefix_tokens=p).eval()
    attn.fused = fused
    torch.manual_seed(1)
    x = torch.randn(2, p + H * W, DIM)
    q, k, v = _qkv(attn, x)
    N = p + H * W
    row = (torch.arange(N) - p) // W
    col = (torch.arange(N) - p) % W
    is_patch = torch.arange(N) >= p
    row_mask = (row[:, None] == row[None, :]) | ~is_patch[None, :] | ~is_patch[:, None]   # + prefix keys, prefix global
    rows = explicit_attention(q, k, v, row_mask)[0]                                         # (B, h, N, d)
    col_mask = (col[:, None] == col[None, :]) & is_patch[None, :] & is_patch[:, None]
    col_mask[:p, :p] = torch.eye(p, dtype=torch.bool)                                     # prefix rows: pass through
    cols = explicit_attention(q, k, rows, col_mask)[0]
    expected = torch.cat([rows[:, :, :p], cols[:, :, p:]], dim=2)
    torch.testing.assert_close(attn(x), _out(attn, expected), rtol=1e-5, atol=1e-5)


def test_linformer_with_k_equal_n_and_identity_projections_is_full_attention(fused):
    n = 17
    attn = LinformerAttention(DIM, HEADS, num_tokens=n, k=n).eval()
    with torch.no_grad():
        attn.E.copy_(torch.eye(n))
        attn.F.copy_(torch.eye(n))
    attn.fused = fused
    x = torch.randn(2, n, DIM)
    torch.testing.assert_close(attn(x), _pair(attn)(x), rtol=1e-5, atol=1e-5)


def test_linformer_projects_keys_and_values_along_the_sequence():
    n, k = 17, 5
    attn = LinformerAttention(DIM, HEADS, num_tokens=n, k=k).eval()
    x = torch.randn(2, n, DIM)
    q, kk, v = _qkv(attn, x)
    out, w = explicit_attention(q, attn.E @ kk, attn.F @ v)
    assert w.shape == (2, HEADS, n, k)
    torch.testing.assert_close(attn(x), _out(attn, out), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="built for 17 tokens, got 16"):
        attn(x[:, :16])


def test_kv_pool_with_ratio_1_is_full_attention(fused):
    attn = KVPoolAttention(DIM, HEADS, grid_size=(4, 4), num_prefix_tokens=1, sr_ratio=1).eval()
    attn.fused = fused
    x = torch.randn(2, 17, DIM)
    torch.testing.assert_close(attn(x), _pair(attn)(x), rtol=1e-5, atol=1e-5)


def test_kv_pool_reduces_keys_by_a_strided_conv(fused):
    attn = KVPoolAttention(DIM, HEADS, grid_size=(4, 6), num_prefix_tokens=1, sr_ratio=2).eval()
    attn.fused = fused
    x = torch.randn(2, 1 + 24, DIM)
    grid = x[:, 1:].reshape(2, 4, 6, DIM).permute(0, 3, 1, 2)
    reduced = torch.nn.functional.conv2d(grid, attn.sr.weight, attn.sr.bias, stride=2)        # (B, C, 2, 3)
    reduced = torch.nn.functional.layer_norm(reduced.flatten(2).transpose(1, 2), (DIM,), attn.sr_norm.weight,
                                             attn.sr_norm.bias, attn.sr_norm.eps)
    kv_in = torch.cat([x[:, :1], reduced], dim=1)                                             # (B, 1 + 6, C)
    q = _qkv(attn, x)[0]
    _, k, v = _qkv(attn, kv_in)
    out, w = explicit_attention(q, k, v)
    assert w.shape == (2, HEADS, 25, 7)
    torch.testing.assert_close(attn(x), _out(attn, out), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ATTENTION_TYPES)
def test_vit_drop_in_trains_and_fused_equals_explicit(kind):
    torch.manual_seed(0)
    model = vitlab.create_model("vit_micro_patch4_32", num_classes=5, attention=kind, linformer_k=16)
    x = torch.randn(2, 3, 32, 32)
    model(x).logsumexp(-1).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        fused_out = model(x)
        probe_calls = []
        for m in model.modules():
            if isinstance(m, Attention):
                m.fused = False
                m.weights.register_forward_hook(lambda _m, _i, out: probe_calls.append(out))
        torch.testing.assert_close(model(x), fused_out, rtol=1e-4, atol=1e-5)
    assert len(probe_calls) >= model.cfg.depth
    for w in probe_calls:   # every recorded softmax is a distribution over its keys
        torch.testing.assert_close(w.sum(-1), torch.ones_like(w.sum(-1)))


def test_full_attention_checkpoint_loads_into_sparse_drop_ins(tmp_path):
    torch.manual_seed(0)
    full = vitlab.create_model("vit_micro_patch4_32", num_classes=5).eval()
    save_model(full, tmp_path / "full")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = full.forward_features(x)                                 # tokens (2, 1 + 64, 64)
    n = full.patch_embed.num_patches                                        # 64 patch tokens
    for kind, extra in (("local", {"attn_window": n}), ("local", {}), ("strided", {}), ("axial", {})):
        model = load_model(tmp_path / "full", attention=kind, **extra)
        assert model.cfg.attention == kind
        loaded, saved = model.state_dict(), full.state_dict()
        assert loaded.keys() == saved.keys() and all(torch.equal(loaded[k], saved[k]) for k in saved)
        with torch.no_grad():
            got = model.forward_features(x)
        if extra:           # one block of all 64 patches: full attention with the same weights, the same tokens
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        else:               # the same weights under a sparse pattern: another function of the input
            assert (got - expected).abs().max() > 1e-2, kind


def test_unknown_attention_type_is_a_one_line_error():
    with pytest.raises(VitlabError, match=r"unknown attention type 'sparse' \(choose from full, local, strided, "
                                          r"axial, linformer, kv_pool\)"):
        vitlab.create_model("vit_micro_patch4_32", attention="sparse")
    with pytest.raises(VitlabError, match="strided attention needs at least 2 heads"):
        make_attention("strided", 8, 1, grid_size=(4, 4))
    with pytest.raises(VitlabError, match="kv_pool sr_ratio must be in 1..4"):
        make_attention("kv_pool", 8, 1, grid_size=(4, 4), sr_ratio=8)
