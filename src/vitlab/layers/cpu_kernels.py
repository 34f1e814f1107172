"""The CPU speed paths of vitlab, in one module. `Linear`, `Mlp` and `Attention` each make one call into it and
take their plain PyTorch path when it returns None; nothing else in the library knows these kernels exist.

What is here, and what each buys (benchmarks/cpu_ablation.py, interleaved in one process; docs/performance.md):
- oneDNN GEMMs for Linear (`linear`). PyTorch sends fp32 CPU matmuls to MKL, which on the README's AMD EPYC
  reaches ~220 GFLOP/s where oneDNN's own fp32 kernels (those PyTorch already uses for bf16) reach 430-540 GFLOP/s
  on the same shapes (ViT-Ti fc1 at batch 32: 8.3 ms vs 3.5 ms). Eager `F.linear` with a bias also copies the bias
  into every output row before the GEMM; oneDNN adds it in the GEMM's epilogue, and `linear_gelu` puts Mlp's GELU
  there too at inference. Paths: inference (no autograd), fp32 or bf16 -> one oneDNN call; fp32 training -> the
  oneDNN forward and a backward of addmm's three products (dx = dy W in oneDNN, dW = dy^T x, db = row sum of dy)
  everywhere but on Intel CPUs, where MKL's fp32 GEMM is the faster (`onednn_fp32_training`);
  bf16 training -> None (nn.Linear's GEMMs are oneDNN already; a oneDNN version measured 1.00x).
- Packed weights (`frozen` Linears, see layers.linear.freeze_for_inference): the weight kept in oneDNN's blocked
  layout between inference calls instead of reordered inside every GEMM (ViT-Ti/16 and ViT-B/16 bf16 inference
  1.04-1.15x). The packed copy lives on the Linear module itself, so it goes when the module goes.
- bf16 attention as two batched GEMMs (`gemm_attention`): the CPU flash kernel of scaled_dot_product_attention is
  no faster in bf16 than in fp32 (ViT-Ti/16 at 224: training 1.42x, inference 1.25x; ViT-B/16 inference 1.11x).
  Memory is then O(N^2) per head, as on the explicit path.
Everywhere else (CUDA, fp16, torch.compile / torch.export / ONNX export / JIT tracing, a build without oneDNN)
every function here returns None or False and the caller runs plain PyTorch. Results equal the plain paths to the
rounding of a different summation order.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
import torch.nn as nn
from torch import Tensor

# --- where the kernels run ---------------------------------------------------------------------------------------
_ONEDNN: bool | None = None
_ONEDNN_BF16: bool | None = None
_VENDOR: str | None = None
_FP32_TRAIN: bool | None = None
_PLAIN = 0                                   # > 0 inside plain_pytorch()


def onednn_available() -> bool:
    """Whether this torch build can run oneDNN's linear (torch.ops.mkldnn._linear_pointwise) on the CPU."""
    global _ONEDNN
    if _ONEDNN is None:
        _ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    return _ONEDNN


def onednn_bf16_available() -> bool:
    """Whether oneDNN runs bf16 GEMMs on this CPU."""
    global _ONEDNN_BF16
    if _ONEDNN_BF16 is None:
        _ONEDNN_BF16 = onednn_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return _ONEDNN_BF16


def cpu_vendor() -> str:
    """The CPU's vendor id as /proc/cpuinfo gives it ("GenuineIntel", "AuthenticAMD", ...); "" where unknown."""
    global _VENDOR
    if _VENDOR is None:
        _VENDOR = ""
        try:
            with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
                for line in f:
                    if line.startswith("vendor_id"):
                        _VENDOR = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
    return _VENDOR


def onednn_fp32_training() -> bool:
    """Whether fp32 training GEMMs go to oneDNN rather than F.linear (MKL). MKL's fp32 GEMM is the slow one on
    AMD (the EPYC of docs/performance.md: oneDNN 1.45x in training) and the fast one on Intel (a Xeon with
    AVX-512, ViT-Ti/16 training batch 32: oneDNN 0.70x), so oneDNN is taken everywhere but on Intel CPUs.
    VITLAB_FP32_TRAIN_GEMM=onednn|mkl overrides the choice (for measurements). Decided once per process, so a run
    and its resume take the same path on the same machine."""
    global _FP32_TRAIN
    if _FP32_TRAIN is None:
        choice = os.environ.get("VITLAB_FP32_TRAIN_GEMM", "").strip().lower()
        _FP32_TRAIN = choice == "onednn" if choice in ("onednn", "mkl") else cpu_vendor() != "GenuineIntel"
    return _FP32_TRAIN


@contextlib.contextmanager
def plain_pytorch() -> Iterator[None]:
    """Within this block every function here declines, so models run their plain PyTorch ops (what a FLOP counter
    or another dispatch-level tool can see: oneDNN's fused ops are invisible to torch's FlopCounterMode)."""
    global _PLAIN
    _PLAIN += 1
    try:
        yield
    finally:
        _PLAIN -= 1


def _tracing() -> bool:
    return (_PLAIN > 0 or torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()
            or torch.onnx.is_in_onnx_export())


def onednn_dtype(x: Tensor, weight: Tensor) -> torch.dtype | None:
    """The dtype a GEMM of `x` with `weight` runs in on a CPU, if oneDNN runs it here: bf16 under bf16 autocast or
    for bf16 tensors (where the CPU has bf16), fp32 for fp32 tensors without autocast; else None. Always None while
    torch.compile, torch.export, ONNX export or the JIT trace: they get the plain graph (Inductor makes its own
    oneDNN calls from it)."""
    if _tracing() or x.device.type != "cpu" or x.numel() == 0 or not onednn_available():
        return None
    if torch.is_autocast_enabled("cpu"):
        bf16 = torch.get_autocast_dtype("cpu") == torch.bfloat16
        return torch.bfloat16 if bf16 and onednn_bf16_available() else None
    if x.dtype == weight.dtype == torch.bfloat16:
        return torch.bfloat16 if onednn_bf16_available() else None
    return torch.float32 if x.dtype == weight.dtype == torch.float32 else None


# --- Linear ------------------------------------------------------------------------------------------------------
def linear(layer: nn.Linear, x: Tensor, frozen: bool = False) -> Tensor | None:
    """x W^T + b for `layer` through oneDNN where that runs here, else None (the caller runs F.linear).
    x (..., in) -> (..., out). frozen: inference may use (and keep on `layer`) the packed weight."""
    dtype = onednn_dtype(x, layer.weight)
    if dtype is not None and not torch.is_grad_enabled():
        return onednn_linear(x, layer.weight, layer.bias, dtype, pack_on=layer if frozen else None)
    if dtype == torch.float32 and onednn_fp32_training():  # fp32 training; bf16 training stays on F.linear
        shape = x.shape
        out = _OneDNNLinear.apply(x.reshape(-1, shape[-1]), layer.weight, layer.bias)      # (rows, out)
        return out.reshape(*shape[:-1], -1)                                                 # (..., out)
    return None


def linear_gelu(layer: nn.Linear, x: Tensor, approximate: str, frozen: bool = False) -> Tensor | None:
    """GELU(x W^T + b) in one oneDNN call (GELU and bias in the GEMM's epilogue) at CPU inference, else None."""
    if torch.is_grad_enabled():
        return None
    dtype = onednn_dtype(x, layer.weight)
    if dtype is None:
        return None
    return onednn_linear(x, layer.weight, layer.bias, dtype, "gelu", approximate, pack_on=layer if frozen else None)


def onednn_linear(x: Tensor, weight: Tensor, bias: Tensor | None, dtype: torch.dtype, act: str = "none",
                  approximate: str = "", pack_on: nn.Module | None = None) -> Tensor:
    """act(x W^T + b) in `dtype` by one oneDNN call, x (..., in) -> (..., out), for inference (no autograd).
    act: "none", or "gelu" with approximate "none"/"tanh". pack_on: the module that keeps the packed weight."""
    if torch.is_grad_enabled():
        raise RuntimeError("onednn_linear is for inference: call it under torch.no_grad() or inference_mode()")
    shape = x.shape
    x = x.reshape(-1, shape[-1]).to(dtype)                                            # (rows, in)
    w = weight.to(dtype) if pack_on is None else packed_weight(pack_on, weight, dtype, x.shape[0])
    b = None if bias is None else bias.to(dtype)
    out = torch.ops.mkldnn._linear_pointwise(x, w, b, act, [], approximate)
    return out.reshape(*shape[:-1], -1)                                               # (..., out)


PACKED_ATTR = "_vitlab_packed_weight"      # the attribute of a Linear that holds ((version, address, dtype), packed)


def packed_weight(module: nn.Module, weight: Tensor, dtype: torch.dtype, rows: int) -> Tensor:
    """`weight` (out, in) in `dtype` and oneDNN's blocked layout, kept on `module` while the parameter's storage
    and version stay the same (an optimizer step, load_state_dict or any in-place update under no_grad bumps the
    version; .to() moves the storage). Writes through `.data` bypass the version: see drop_packed."""
    key = (weight._version, weight.data_ptr(), dtype)
    hit = module.__dict__.get(PACKED_ATTR)
    if hit is None or hit[0] != key:
        with torch.no_grad():
            hit = (key, torch.ops.mkldnn._reorder_linear_weight(weight.to(dtype), rows))   # rows: a layout hint
        module.__dict__[PACKED_ATTR] = hit
    return hit[1]


def drop_packed(module: nn.Module) -> None:
    """Forget `module`'s packed weight (it is made again on the next frozen inference call)."""
    module.__dict__.pop(PACKED_ATTR, None)


class _OneDNNLinear(torch.autograd.Function):
    """fp32 y = x W^T + b, x (rows, in): the forward and dx = dy W in oneDNN (dy times the transposed weight, a
    small copy), dW = dy^T x and db = the row sum of dy as addmm's backward computes them."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        grad = grad.contiguous()
        dx = torch.ops.mkldnn._linear_pointwise(grad, weight.t().contiguous(), None, "none", [], "") \
            if need_x else None                                                       # (rows, in)
        dw = torch.ops.mkldnn._linear_pointwise(grad.t(), x.t(), None, "none", [], "") if need_w else None
        db = grad.sum(0) if ctx.has_bias and need_b else None
        return dx, dw, db


# --- attention ---------------------------------------------------------------------------------------------------
def bf16_on_cpu(q: Tensor) -> bool:
    """bf16 on the CPU, where `gemm_attention` replaces the fused kernel (see the module docstring)."""
    return q.device.type == "cpu" and q.dtype == torch.bfloat16


def gemm_attention(q: Tensor, k: Tensor, v: Tensor, scale: float, attn_mask: Tensor | None,
                   attn_drop: nn.Module) -> Tensor | None:
    """softmax(scale q k^T + mask) v as two batched GEMMs on (B*h, N, d) operands, the scale applied inside the
    first GEMM (baddbmm's alpha) rather than as a pass over q; None where it does not apply (not bf16 on a CPU).
    q (B, h, Nq, d), k (B, h, Nk, d), v (B, h, Nk, dv) -> (B, h, Nq, dv). attn_mask: bool (True = attend) or an
    additive float bias, broadcastable to (B, h, Nq, Nk); attn_drop: dropout on the weights."""
    if not bf16_on_cpu(q):
        return None
    B, h, Nq, d = q.shape
    Nk, dv = k.shape[-2], v.shape[-1]
    q3, k3, v3 = q.reshape(B * h, Nq, d), k.reshape(B * h, Nk, d), v.reshape(B * h, Nk, dv)  # copies or views
    scores = torch.baddbmm(q3.new_zeros(1, 1, 1), q3, k3.transpose(1, 2), beta=0.0, alpha=scale)  # (B*h, Nq, Nk)
    weights = masked_softmax(scores.view(B, h, Nq, Nk), attn_mask)                            # (B, h, Nq, Nk)
    out = torch.bmm(attn_drop(weights).view(B * h, Nq, Nk).to(v3.dtype), v3)                   # (B*h, Nq, dv)
    return out.view(B, h, Nq, dv)


def masked_softmax(scores: Tensor, attn_mask: Tensor | None) -> Tensor:
    """softmax over the last dim after a bool mask (True = attend) or an additive float bias (the explicit
    attention path uses it too)."""
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool \
            else scores + attn_mask
    return scores.softmax(dim=-1)
