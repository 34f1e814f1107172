"""nn.Linear whose CPU GEMMs run in oneDNN.

On the CPU, PyTorch sends fp32 matmuls to MKL, which on the AMD EPYC of the README reaches ~220 GFLOP/s, while
oneDNN's own fp32 kernels (the ones PyTorch already uses for bf16) reach 430-540 GFLOP/s on the same shapes (ViT-Ti
fc1 at batch 32: 8.3 ms vs 3.5 ms). Eager `F.linear` with a bias also copies the bias into every output row before
the GEMM (a quarter of fc1's time in bf16); oneDNN adds it in the GEMM's epilogue, and `Mlp` puts GELU there too at
inference. So on a CPU with oneDNN, `Linear` runs
- inference (no autograd), fp32 or bf16 (autocast or bf16 tensors): one oneDNN call;
- fp32 training: the oneDNN forward, and a backward of the same three products as addmm's (dx = dy W in oneDNN,
  dW = dy^T x, db = row sum of dy);
- bf16 training: nn.Linear (its GEMMs are oneDNN already; a oneDNN version measured 1.00x);
and everywhere else (CUDA, fp16, torch.compile / export tracing, no oneDNN) nn.Linear unchanged. Results equal the
plain path to the rounding of a different summation order. Parameters, state-dict keys and initialisation are
nn.Linear's.

`freeze_for_inference(model)` (vitlab predict, eval and bench call it) lets each Linear keep its weight in oneDNN's
blocked layout between calls, packed once instead of reordered inside every GEMM (ViT-Ti/16 and ViT-B/16 bf16
inference 1.04-1.15x). The packed copy follows in-place updates made through the parameter (they bump its
version) and moves; writes through `.data` bypass the version counter: call freeze_for_inference again.
"""
from __future__ import annotations

import weakref

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


class Linear(nn.Linear):
    """nn.Linear; x (..., in_features) -> (..., out_features). See the module docstring for the oneDNN paths."""

    frozen = False           # freeze_for_inference: keep the packed weight between inference calls

    def forward(self, x: Tensor) -> Tensor:
        dtype = onednn_dtype(x, self.weight)
        if dtype is not None and not torch.is_grad_enabled():
            return onednn_linear(x, self.weight, self.bias, dtype, pack=self.frozen)
        if dtype == torch.float32:                       # fp32 training; bf16 training stays on F.linear
            shape = x.shape
            out = _OneDNNLinear.apply(x.reshape(-1, shape[-1]), self.weight, self.bias)  # (rows, out)
            return out.reshape(*shape[:-1], -1)
        return F.linear(x, self.weight, self.bias)


def freeze_for_inference(model: nn.Module, frozen: bool = True) -> nn.Module:
    """Declare `model`'s weights constant for inference (see the module docstring); returns `model`. Also drops
    packed copies made before, so it doubles as the refresh after writes through `.data`."""
    for m in model.modules():
        if isinstance(m, Linear):
            m.frozen = frozen
            _PACKED.pop(id(m.weight), None)
    return model


def onednn_dtype(x: Tensor, weight: Tensor) -> torch.dtype | None:
    """The dtype a GEMM of `x` with `weight` runs in on a CPU, if oneDNN runs it here: bf16 under bf16 autocast or
    for bf16 tensors (where the CPU has bf16), fp32 for fp32 tensors without autocast; else None and the caller
    takes the plain path. Always None while torch.compile, torch.export, ONNX export or the JIT trace: they get the
    plain graph (Inductor makes its own oneDNN calls from it)."""
    if (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()
            or torch.onnx.is_in_onnx_export() or x.device.type != "cpu" or x.numel() == 0
            or not onednn_available()):
        return None
    if torch.is_autocast_enabled("cpu"):
        bf16 = torch.get_autocast_dtype("cpu") == torch.bfloat16
        return torch.bfloat16 if bf16 and _onednn_bf16() else None
    if x.dtype == weight.dtype == torch.bfloat16:
        return torch.bfloat16 if _onednn_bf16() else None
    return torch.float32 if x.dtype == weight.dtype == torch.float32 else None


def onednn_linear(x: Tensor, weight: Tensor, bias: Tensor | None, dtype: torch.dtype, act: str = "none",
                  approximate: str = "", pack: bool = False) -> Tensor:
    """act(x W^T + b) in `dtype` by one oneDNN call, x (..., in) -> (..., out), for inference (no autograd).
    act: "none", or "gelu" with approximate "none"/"tanh". pack: use the cached packed weight (packed_weight)."""
    if torch.is_grad_enabled():
        raise RuntimeError("onednn_linear is for inference: call it under torch.no_grad() or inference_mode()")
    shape = x.shape
    x = x.reshape(-1, shape[-1]).to(dtype)                                            # (rows, in)
    w = packed_weight(weight, dtype, x.shape[0]) if pack else weight.to(dtype)
    b = None if bias is None else bias.to(dtype)
    out = torch.ops.mkldnn._linear_pointwise(x, w, b, act, [], approximate)
    return out.reshape(*shape[:-1], -1)                                               # (..., out)


_PACKED: dict[int, tuple[tuple, Tensor]] = {}   # id(parameter) -> ((version, address, dtype), packed weight)


def packed_weight(weight: Tensor, dtype: torch.dtype, rows: int) -> Tensor:
    """`weight` (out, in) in `dtype` and oneDNN's blocked layout (GEMMs ~5% faster here), cached per parameter
    while its storage and version stay the same (an optimizer step, load_state_dict or any in-place update under
    no_grad bumps the version; .to() moves the storage). The entry goes when the parameter does."""
    key = (weight._version, weight.data_ptr(), dtype)
    hit = _PACKED.get(id(weight))
    if hit is None or hit[0] != key:
        if hit is None:
            weakref.finalize(weight, _PACKED.pop, id(weight), None)
        with torch.no_grad():
            hit = (key, torch.ops.mkldnn._reorder_linear_weight(weight.to(dtype), rows))   # rows: a layout hint
        _PACKED[id(weight)] = hit
    return hit[1]


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


_ONEDNN: bool | None = None
_ONEDNN_BF16: bool | None = None


def onednn_available() -> bool:
    """Whether this torch build can run oneDNN's linear (torch.ops.mkldnn._linear_pointwise) on the CPU."""
    global _ONEDNN
    if _ONEDNN is None:
        _ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    return _ONEDNN


def _onednn_bf16() -> bool:
    global _ONEDNN_BF16
    if _ONEDNN_BF16 is None:
        _ONEDNN_BF16 = onednn_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return _ONEDNN_BF16
