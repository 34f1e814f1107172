"""FLOP counting by intercepting aten ops (matmuls, convolutions, fused attention), on meta tensors: counting
a ViT-H costs no compute. Figures are multiply-accumulates (MACs), the unit papers call "FLOPs"."""
from __future__ import annotations

from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass of `model` on a zero input of `input_shape` (batch included).

    Counts every matmul, linear, convolution and attention product (fused SDPA included).
    """
    from ..layers.cpu_kernels import plain_pytorch

    device = next(iter(model.parameters()), torch.empty(0)).device
    # plain ops only: FlopCounterMode cannot see oneDNN's fused linear (the CPU inference path) nor the CPU flash
    # kernel of scaled_dot_product_attention, so both run as the plain matmuls they stand for
    with plain_pytorch(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(input_shape, device=device))
    return counter.get_total_flops() // 2   # torch counts a multiply-add as 2 FLOPs


def model_summary(name: str, *, img_size: int | None = None, num_classes: int | None = None,
                  flops: bool = True, **overrides: Any) -> dict[str, Any]:
    """Parameters, GMACs at the model's input size and token count, computed on the meta device."""
    from ..registry import create_model

    with torch.device("meta"):
        model = create_model(name, img_size=img_size, num_classes=num_classes, **overrides).eval()
    size = getattr(getattr(model, "patch_embed", None), "img_size", None) or _img_size(model, img_size)
    in_chans = getattr(getattr(model, "cfg", None), "in_chans", 3)
    out: dict[str, Any] = {"name": name, "params": sum(p.numel() for p in model.parameters()),
                           "input": (in_chans, size[0], size[1])}
    grid = getattr(getattr(model, "patch_embed", None), "num_patches", None)
    out["prefix_tokens"] = getattr(model, "num_prefix_tokens", 0)
    out["tokens"] = grid + out["prefix_tokens"] if grid is not None else None
    if flops:
        out["gflops"] = count_macs(model, (1, in_chans, size[0], size[1])) / 1e9
    return out


def _img_size(model: nn.Module, img_size: int | None) -> tuple[int, int]:
    s = img_size or getattr(getattr(model, "cfg", None), "img_size", 224)
    return (s, s) if isinstance(s, int) else tuple(s)
