"""The one q/k/v head split: split_fused_heads / split_heads against slicing the projection weights by hand."""
import torch
import torch.nn.functional as F

from vitlab.convert._keymap import fuse_qkv
from vitlab.layers import Attention, split_fused_heads, split_heads


def _by_hand(x, weight, bias, heads):
    """q/k/v of a fused projection: rows [0:C] make q, [C:2C] k, [2C:3C] v; head j is channels [j*d:(j+1)*d]."""
    B, N, C = x.shape
    d = C // heads
    out = []
    for part in range(3):
        rows = slice(part * C, (part + 1) * C)
        t = F.linear(x, weight[rows], bias[rows])                                  # (B, N, C)
        out.append(torch.stack([t[..., j * d:(j + 1) * d] for j in range(heads)], dim=1))   # (B, heads, N, d)
    return out


def test_split_fused_heads_is_the_row_blocks_then_the_channel_blocks():
    torch.manual_seed(0)
    attn = Attention(24, num_heads=4)
    x = torch.randn(2, 5, 24)
    got = split_fused_heads(attn.qkv(x), attn.num_heads)
    for g, want in zip(got, _by_hand(x, attn.qkv.weight, attn.qkv.bias, 4), strict=True):
        assert g.shape == (2, 4, 5, 6)
        torch.testing.assert_close(g, want)


def test_a_checkpoint_fused_by_fuse_qkv_splits_back_into_its_own_q_k_v():
    torch.manual_seed(1)
    q, k, v = (torch.nn.Linear(16, 16) for _ in range(3))
    sd = {f"attn.{n}.{p}": getattr(m, p) for n, m in zip("qkv", (q, k, v)) for p in ("weight", "bias")}
    fused = fuse_qkv(sd)
    x = torch.randn(3, 7, 16)
    parts = split_fused_heads(F.linear(x, fused["attn.qkv.weight"], fused["attn.qkv.bias"]), num_heads=2)
    for got, lin in zip(parts, (q, k, v), strict=True):
        torch.testing.assert_close(got, split_heads(lin(x), 2))


def test_two_part_split_and_the_single_projection_split():
    t = torch.arange(2 * 3 * 8, dtype=torch.float32).view(2, 3, 8)               # (B, N, 2 * heads * d), d = 2
    k, v = split_fused_heads(t, num_heads=2, parts=2)
    torch.testing.assert_close(k, split_heads(t[..., :4], 2))
    torch.testing.assert_close(v, split_heads(t[..., 4:], 2))
    assert split_heads(t, 4)[0, 1, 2].tolist() == t[0, 2, 2:4].tolist()         # head 1 of token 2: channels 2, 3
