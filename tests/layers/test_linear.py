"""layers.Linear: nn.Linear with a oneDNN path (layers.cpu_kernels) under bf16 on a CPU (bias in the GEMM epilogue;
GELU too in Mlp at inference). Each path must equal the plain one, and the fast path must really be the one taken."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from vitlab.layers import Mlp
from vitlab.layers import cpu_kernels as K
from vitlab.layers import linear as L

pytestmark = pytest.mark.skipif(not K.onednn_bf16_available(), reason="this CPU or torch build has no oneDNN bf16")
autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)   # noqa: E731


@pytest.fixture
def spy(monkeypatch):
    calls = []
    real = K.onednn_linear

    def onednn_linear(*args, **kwargs):
        calls.append(args[4] if len(args) > 4 else kwargs.get("act", "none"))
        return real(*args, **kwargs)

    monkeypatch.setattr(K, "onednn_linear", onednn_linear)
    return calls


@pytest.mark.parametrize("bias", [True, False])
def test_bf16_inference_path_equals_addmm_and_training_stays_plain(spy, bias):
    torch.manual_seed(0)
    fast = L.Linear(48, 80, bias=bias)
    plain = nn.Linear(48, 80, bias=bias)
    plain.load_state_dict(fast.state_dict())                      # the same keys as nn.Linear
    x = torch.randn(2, 7, 48)
    with torch.no_grad(), autocast():
        out, ref = fast(x), plain(x)
    assert spy == ["none"]                                        # the oneDNN path, once
    assert out.dtype == ref.dtype == torch.bfloat16 and out.shape == (2, 7, 80)
    torch.testing.assert_close(out, ref, rtol=0.02, atol=2e-3)
    with autocast():
        fast(x.requires_grad_()).float().sum().backward()         # training: nn.Linear's own path
    assert spy == ["none"] and x.grad is not None and fast.weight.grad is not None


def test_fp32_and_bf16_tensors_without_autocast_take_onednn_at_inference(spy):
    torch.manual_seed(0)
    layer = L.Linear(16, 8)
    x = torch.randn(5, 16)
    with torch.no_grad():
        out = layer(x)
    assert spy == ["none"] and out.dtype == torch.float32
    torch.testing.assert_close(out, F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-6)
    layer = layer.to(torch.bfloat16)
    with torch.no_grad():
        out = layer(x.bfloat16())
    assert spy == ["none", "none"] and out.dtype == torch.bfloat16
    torch.testing.assert_close(out, F.linear(x.bfloat16(), layer.weight, layer.bias), rtol=0.02, atol=1e-2)


@pytest.mark.parametrize("bias", [True, False])
def test_fp32_training_path_equals_addmm_forward_and_gradients(monkeypatch, bias):
    monkeypatch.setattr(K, "_FP32_TRAIN", True)                  # the path under test, on any vendor's CPU
    calls = []
    real = K._OneDNNLinear.apply
    monkeypatch.setattr(K._OneDNNLinear, "apply", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(0)
    fast, plain = L.Linear(48, 80, bias=bias), nn.Linear(48, 80, bias=bias)
    plain.load_state_dict(fast.state_dict())
    x = torch.randn(3, 70, 48)
    results = []
    for layer in (fast, plain):
        xi = x.clone().requires_grad_()
        out = layer(xi)
        out.sin().sum().backward()
        results.append([out, xi.grad] + [p.grad for p in layer.parameters()])
    assert calls == [1]                                           # the fast layer's own autograd function
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        fast.weight.requires_grad_(False)
    xi = x.clone().requires_grad_()
    fast(xi).sum().backward()                                     # a frozen weight: only dx is computed
    assert fast.weight.grad is not None and xi.grad is not None


@pytest.mark.parametrize("vendor, env, expected", [
    ("AuthenticAMD", "", True), ("GenuineIntel", "", False), ("", "", True),
    ("GenuineIntel", "onednn", True), ("AuthenticAMD", "mkl", False), ("AuthenticAMD", " MKL ", False),
    ("GenuineIntel", "bogus", False),
])
def test_fp32_training_gemm_policy_by_vendor_and_override(monkeypatch, vendor, env, expected):
    monkeypatch.setattr(K, "_VENDOR", vendor)
    monkeypatch.setattr(K, "_FP32_TRAIN", None)
    monkeypatch.setenv("VITLAB_FP32_TRAIN_GEMM", env)
    assert K.onednn_fp32_training() is expected
    calls = []
    real = K._OneDNNLinear.apply
    monkeypatch.setattr(K._OneDNNLinear, "apply", lambda *a: calls.append(1) or real(*a))
    layer, x = L.Linear(8, 4), torch.randn(5, 8, requires_grad=True)
    out = layer(x)
    assert len(calls) == int(expected and K.onednn_available())
    torch.testing.assert_close(out, F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-6)


def test_cpu_vendor_reads_proc_cpuinfo(monkeypatch, tmp_path):
    monkeypatch.setattr(K, "_VENDOR", None)
    assert K.cpu_vendor() == K.cpu_vendor()                       # cached
    info = Path("/proc/cpuinfo")
    if info.is_file():
        line = next((ln for ln in info.read_text(errors="replace").splitlines() if ln.startswith("vendor_id")), "")
        assert K.cpu_vendor() == (line.split(":", 1)[1].strip() if line else "")


def test_plain_path_under_tracing_and_off_the_cpu(spy):
    layer = L.Linear(6, 4)
    graph = str(torch.jit.trace(layer, torch.randn(2, 6), check_trace=False).graph)
    assert "aten::linear" in graph and "mkldnn" not in graph and spy == []   # traced/exported graphs stay plain
    with torch.device("meta"):
        meta = L.Linear(6, 4)
    with torch.no_grad():
        assert meta(torch.randn(2, 6, device="meta")).shape == (2, 4)
    assert spy == []


def test_mlp_inference_fuses_gelu_and_equals_the_plain_path(spy):
    torch.manual_seed(0)
    mlp = Mlp(32, 128).eval()
    x = torch.randn(3, 11, 32)
    with torch.no_grad(), autocast():
        fused = mlp(x)
    assert spy == ["gelu", "none"]                                # fc1 + GELU in one call, then fc2
    with autocast():
        plain = mlp(x)                                            # grad enabled: the plain path
    assert spy == ["gelu", "none"]
    torch.testing.assert_close(fused.float(), plain.float(), rtol=0.02, atol=1e-2)
    torch.testing.assert_close(fused.float(), mlp(x), rtol=0.05, atol=0.02)   # and the fp32 result, to bf16


def test_onednn_linear_refuses_autograd():
    with pytest.raises(RuntimeError, match="for inference"):
        K.onednn_linear(torch.randn(2, 3), torch.randn(4, 3), None, torch.bfloat16, "gelu", "none")


def test_frozen_linear_packs_once_and_follows_in_place_updates():
    torch.manual_seed(0)
    layer = L.freeze_for_inference(nn.Sequential(L.Linear(24, 40)))[0]
    x = torch.randn(6, 24)

    def run() -> torch.Tensor:
        with torch.no_grad(), autocast():
            return layer(x).float()

    def plain() -> torch.Tensor:
        with torch.no_grad(), autocast():
            return F.linear(x, layer.weight, layer.bias).float()

    torch.testing.assert_close(run(), plain(), rtol=0.02, atol=1e-2)
    packed = layer.__dict__[K.PACKED_ATTR][1]
    run()
    assert layer.__dict__[K.PACKED_ATTR][1] is packed                # reused, not packed again
    opt = torch.optim.AdamW(layer.parameters(), lr=0.5)
    layer(x).square().sum().backward()
    opt.step()                                                     # in-place update: the version moves on
    assert not torch.allclose(run(), torch.zeros(1)) and layer.__dict__[K.PACKED_ATTR][1] is not packed
    torch.testing.assert_close(run(), plain(), rtol=0.02, atol=1e-2)
    layer.load_state_dict({"weight": torch.randn(40, 24), "bias": torch.zeros(40)})
    torch.testing.assert_close(run(), plain(), rtol=0.02, atol=1e-2)
    layer.weight.data.mul_(-1)                                     # .data: invisible to the version counter ...
    L.freeze_for_inference(layer)                                  # ... so freezing again refreshes
    torch.testing.assert_close(run(), plain(), rtol=0.02, atol=1e-2)


def test_the_packed_copy_lives_and_dies_with_its_module():
    import gc
    import weakref

    layer = L.freeze_for_inference(L.Linear(16, 16))
    with torch.no_grad(), autocast():
        layer(torch.randn(3, 16))
    packed = weakref.ref(layer.__dict__[K.PACKED_ATTR][1])
    assert list(layer.state_dict()) == ["weight", "bias"]          # not a parameter, buffer or state-dict entry
    del layer
    gc.collect()
    assert packed() is None                                        # no global table keeps it alive


def test_unfrozen_linear_keeps_no_packed_copy():
    layer = L.Linear(8, 8)
    with torch.no_grad(), autocast():
        layer(torch.randn(2, 8))
    assert K.PACKED_ATTR not in layer.__dict__


def test_empty_batches_take_the_plain_path():
    layer, mlp = L.Linear(4, 3), Mlp(4, 8).eval()
    with torch.no_grad(), autocast():
        assert layer(torch.randn(0, 4)).shape == (0, 3)
        assert mlp(torch.randn(2, 0, 4)).shape == (2, 0, 4)
