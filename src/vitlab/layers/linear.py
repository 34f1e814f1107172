"""nn.Linear with a bf16 CPU inference path.

Eager `F.linear` with a bias runs addmm, which first copies the bias into every row of the output and then
accumulates the GEMM onto it: for ViT-Ti's fc1 at batch 32 (6304 x 768 outputs) that copy is a quarter of the
layer's time. oneDNN's linear adds the bias in the GEMM's epilogue instead (and can apply GELU there too, see
Mlp). Under bf16 on a CPU (bf16 autocast, or bf16 tensors) without autograd, `Linear` takes that path (ViT-Ti/16
bf16 inference 1.13x, ViT-B/16 1.12x: benchmarks/cpu_ablation.py); elsewhere (fp32, training, CUDA, no oneDNN) it
is nn.Linear unchanged. A training version (the same epilogue, addmm's three products as the backward) measured
1.00x on a ViT-Ti training step and was left out. Parameters, state-dict keys and initialisation are nn.Linear's.

`freeze_for_inference(model)` (vitlab predict, eval and bench call it) lets each Linear keep its bf16 weight in
oneDNN's blocked layout between calls, packed once instead of reordered inside every GEMM (ViT-Ti/16 and
ViT-B/16 bf16 inference 1.04-1.05x). The packed copy follows in-place updates made through the parameter (they bump
its version) and moves; writes through `.data` bypass the version counter: call freeze_for_inference again.
"""
from __future__ import annotations

import weakref

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


class Linear(nn.Linear):
    """nn.Linear; x (..., in_features) -> (..., out_features). See the module docstring for the bf16 CPU path."""

    frozen = False           # freeze_for_inference: keep the packed bf16 weight between inference calls

    def forward(self, x: Tensor) -> Tensor:
        dtype = None if torch.is_grad_enabled() else cpu_bf16(x)
        if dtype is None:
            return F.linear(x, self.weight, self.bias)
        return onednn_linear(x, self.weight, self.bias, dtype, pack=self.frozen)


def freeze_for_inference(model: nn.Module, frozen: bool = True) -> nn.Module:
    """Declare `model`'s weights constant for inference (see the module docstring); returns `model`. Also drops
    packed copies made before, so it doubles as the refresh after writes through `.data`."""
    for m in model.modules():
        if isinstance(m, Linear):
            m.frozen = frozen
            _PACKED.pop(id(m.weight), None)
    return model


def cpu_bf16(x: Tensor) -> torch.dtype | None:
    """torch.bfloat16 if `x` is bound for a bf16 GEMM on a CPU that oneDNN can run (bf16 autocast on, or a bf16
    tensor), else None: the caller then takes the plain path. Under torch.compile always None: Inductor makes
    its own oneDNN calls, with fusions of its own, from the plain graph."""
    if torch.compiler.is_compiling() or x.device.type != "cpu" or x.numel() == 0 or not _onednn_bf16():
        return None
    if torch.is_autocast_enabled("cpu"):
        return torch.bfloat16 if torch.get_autocast_dtype("cpu") == torch.bfloat16 else None
    return torch.bfloat16 if x.dtype == torch.bfloat16 else None


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


_ONEDNN_BF16: bool | None = None


def _onednn_bf16() -> bool:
    global _ONEDNN_BF16
    if _ONEDNN_BF16 is None:
        _ONEDNN_BF16 = (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
                        and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()))
    return _ONEDNN_BF16
