import math

import pytest
import torch

from vitlab.layers import Attention, explicit_attention


def reference_attention(x, attn, mask=None):
    """Multi-head attention written out from the formulas, with its own head split."""
    B, N, C = x.shape
    h, d = attn.num_heads, C // attn.num_heads
    Wq, Wk, Wv = attn.qkv.weight.split(C)            # each (C, C)
    bq, bk, bv = attn.qkv.bias.split(C)
    outs = []
    for i in range(h):
        sl = slice(i * d, (i + 1) * d)
        q = x @ Wq[sl].T + bq[sl]
        k = x @ Wk[sl].T + bk[sl]
        v = x @ Wv[sl].T + bv[sl]
        s = q @ k.transpose(-2, -1) / math.sqrt(d)
        if mask is not None:
            s = s + mask
        outs.append(torch.softmax(s, -1) @ v)
    return torch.cat(outs, -1) @ attn.proj.weight.T + attn.proj.bias


@pytest.mark.parametrize("fused", [True, False])
def test_attention_equals_formula(fused):
    torch.manual_seed(0)
    attn = Attention(32, num_heads=4, fused=fused).eval()
    x = torch.randn(2, 7, 32)
    torch.testing.assert_close(attn(x), reference_attention(x, attn), atol=1e-5, rtol=1e-5)


def test_fused_equals_explicit_with_float_and_bool_masks():
    torch.manual_seed(0)
    attn = Attention(48, num_heads=3).eval()
    x = torch.randn(3, 10, 48)
    bias = torch.randn(1, 3, 10, 10)
    keep = torch.rand(10, 10) > 0.3
    keep.fill_diagonal_(True)
    for mask in (None, bias, keep):
        attn.fused = True
        fused = attn(x, mask)
        attn.fused = False
        explicit = attn(x, mask)
        torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)


def test_gradients_equal_on_both_paths():
    torch.manual_seed(0)
    attn = Attention(16, num_heads=2)
    x = torch.randn(2, 5, 16, requires_grad=True)
    grads = []
    for fused in (True, False):
        attn.fused = fused
        x.grad = None
        attn.zero_grad()
        attn(x).square().sum().backward()
        grads.append((x.grad.clone(), attn.qkv.weight.grad.clone()))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_explicit_path_exposes_weights_to_probe():
    torch.manual_seed(0)
    attn = Attention(16, num_heads=2, fused=False).eval()
    seen = []
    attn.weights.register_forward_hook(lambda m, i, o: seen.append(o))
    attn(torch.randn(1, 6, 16))
    assert len(seen) == 1 and seen[0].shape == (1, 2, 6, 6)
    torch.testing.assert_close(seen[0].sum(-1), torch.ones(1, 2, 6))
    attn.fused = True
    attn(torch.randn(1, 6, 16))
    assert len(seen) == 1          # the fused path computes no weights


def test_explicit_attention_function_masks_with_bool():
    q = k = v = torch.eye(4).unsqueeze(0)
    mask = torch.ones(4, 4, dtype=torch.bool).tril()
    out, w = explicit_attention(q, k, v, mask)
    assert torch.all(w.triu(1) == 0)
    torch.testing.assert_close(w.sum(-1), torch.ones(1, 4))


def test_heads_must_divide_dim():
    with pytest.raises(ValueError, match="not divisible"):
        Attention(10, num_heads=3)


def test_bf16_cpu_fast_path_equals_explicit_path_and_the_fp32_result():
    torch.manual_seed(0)
    attn = Attention(64, num_heads=4).eval()
    x = torch.randn(2, 50, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = attn(x)
        attn.fused = False
        explicit = attn(x)
        attn.fused = True
    assert fast.dtype == torch.bfloat16
    torch.testing.assert_close(fast, explicit, rtol=0, atol=0)        # scale 1/4: exact in bf16 either way
    torch.testing.assert_close(fast.float(), attn(x), rtol=0.05, atol=0.02)   # bf16 rounding of the fp32 result
    seen = []
    attn.weights.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        attn(x)
    assert seen == []                          # only the explicit path feeds the recording probe


@pytest.mark.parametrize("mask", [None, "bool", "float"])
def test_bf16_cpu_fast_path_gradients_equal_the_explicit_path(mask):
    """head_dim 48: the scale 1/sqrt(48) is not a power of two, so scaling inside the GEMM (fast path) and scaling
    q first (explicit path) round differently; both must agree to bf16 precision, masks and gradients included."""
    torch.manual_seed(0)
    attn = Attention(96, num_heads=2)
    x = torch.randn(3, 20, 96)
    m = None
    if mask == "bool":
        m = torch.rand(3, 1, 20, 20) > 0.3
        m[..., 0] = True                                           # every query attends to something
    elif mask == "float":
        m = torch.randn(1, 2, 20, 20)
    results = []
    for fused in (True, False):
        attn.fused = fused
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = attn(xi, m)
        out.float().square().sum().backward()
        results.append((out.float(), xi.grad, attn.qkv.weight.grad.clone()))
        attn.zero_grad()
    (o1, gx1, gw1), (o2, gx2, gw2) = results
    torch.testing.assert_close(o1, o2, rtol=0.02, atol=0.01)
    for a, b in ((gx1, gx2), (gw1, gw2)):
        assert ((a - b).norm() / b.norm()) < 0.02


def test_bf16_cpu_takes_the_gemm_kernel_with_masks_dropout_and_subclasses(monkeypatch):
    """bf16 on a CPU: the fused path's one call into cpu_kernels.gemm_attention, with or without a mask, with
    dropout on the weights in training; fp32 and the explicit path never call it."""
    import vitlab.layers.cpu_kernels as K

    calls = []
    real = K.gemm_attention
    monkeypatch.setattr(K, "gemm_attention", lambda *a: calls.append(a[0].dtype) or real(*a))
    x = torch.randn(2, 16, 32)

    def run(attn, mask=None, bf16=True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            attn(x, mask).float().sum().backward()
        return [c for c in calls if c == torch.bfloat16]

    assert len(run(Attention(32, 4))) == 1
    assert len(run(Attention(32, 4), torch.ones(16, 16, dtype=torch.bool))) == 2
    assert len(run(Attention(32, 4, attn_drop=0.1))) == 3
    assert len(run(Attention(32, 4), bf16=False)) == 3                   # fp32: asked, declines (SDPA runs)
    assert len(run(Attention(32, 4, fused=False))) == 3                  # explicit: never asked
