"""nn.Linear with a bf16 CPU fast path.

Eager `F.linear` with a bias runs addmm, which first copies the bias into every row of the output and then
accumulates the GEMM onto it: for ViT-Ti's fc1 at batch 32 (6304 x 768 outputs) that copy is a quarter of the
layer's time. oneDNN's linear adds the bias in the GEMM's epilogue instead (and can apply GELU there too, see
Mlp). Under bf16 on a CPU (bf16 autocast, or bf16 tensors) `Linear` takes that path, with a backward that
computes the same three products as addmm's; elsewhere (fp32, CUDA, no oneDNN) it is nn.Linear unchanged.
Parameters, state-dict keys and initialisation are nn.Linear's.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


class Linear(nn.Linear):
    """nn.Linear; x (..., in_features) -> (..., out_features). See the module docstring for the bf16 CPU path."""

    def forward(self, x: Tensor) -> Tensor:
        dtype = cpu_bf16(x)
        if dtype is None:
            return F.linear(x, self.weight, self.bias)
        return onednn_linear(x, self.weight, self.bias, dtype)


def cpu_bf16(x: Tensor) -> torch.dtype | None:
    """torch.bfloat16 if `x` is bound for a bf16 GEMM on a CPU that oneDNN can run (bf16 autocast on, or a bf16
    tensor), else None: the caller then takes the plain path. Under torch.compile always None: Inductor makes
    its own oneDNN calls, with fusions of its own, from the plain graph."""
    if torch.compiler.is_compiling() or x.device.type != "cpu" or not _onednn_bf16():
        return None
    if torch.is_autocast_enabled("cpu"):
        return torch.bfloat16 if torch.get_autocast_dtype("cpu") == torch.bfloat16 else None
    return torch.bfloat16 if x.dtype == torch.bfloat16 else None


def onednn_linear(x: Tensor, weight: Tensor, bias: Tensor | None, dtype: torch.dtype, act: str = "none",
                  approximate: str = "") -> Tensor:
    """act(x W^T + b) in `dtype` by one oneDNN call, x (..., in) -> (..., out). act: "none", or "gelu" with
    approximate "none"/"tanh" (inference only: GELU's backward would need the pre-activation)."""
    shape = x.shape
    x, weight = x.reshape(-1, shape[-1]).to(dtype), weight.to(dtype)                 # (rows, in), (out, in)
    bias = None if bias is None else bias.to(dtype)
    if act == "none" and torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                                      or (bias is not None and bias.requires_grad)):
        out = _OneDNNLinear.apply(x, weight, bias)
    else:
        if act != "none" and torch.is_grad_enabled():
            raise RuntimeError("onednn_linear with a fused activation is for inference (no autograd)")
        out = torch.ops.mkldnn._linear_pointwise(x, weight, bias, act, [], approximate)
    return out.reshape(*shape[:-1], -1)                                               # (..., out)


class _OneDNNLinear(torch.autograd.Function):
    """y = x W^T + b by oneDNN; the backward is addmm's: dx = dy W, dW = dy^T x, db = sum over rows of dy."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        dx = grad.mm(weight) if need_x else None
        dw = grad.t().mm(x) if need_w else None
        db = grad.sum(0) if ctx.has_bias and need_b else None
        return dx, dw, db


_ONEDNN_BF16: bool | None = None


def _onednn_bf16() -> bool:
    global _ONEDNN_BF16
    if _ONEDNN_BF16 is None:
        _ONEDNN_BF16 = (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
                        and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()))
    return _ONEDNN_BF16
