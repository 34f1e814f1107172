"""Recording attention weights.

Every vitlab attention is `vitlab.layers.Attention` (or a subclass). Its explicit path sends the softmax weights
through `self.weights`, an identity module; a forward hook there sees them. `record_attention` switches each
Attention module to the explicit path for one forward call only and restores every `fused` flag and removes every
hook afterwards, also when the forward raises: the model is left exactly as it was (no global flag is touched).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from ..errors import VitlabError
from ..layers import Attention


def attention_modules(model: nn.Module) -> list[Attention]:
    """The model's Attention modules in registration order (for ViT: block order)."""
    return [m for m in model.modules() if isinstance(m, Attention)]


@contextmanager
def recording(model: nn.Module) -> Iterator[list[Tensor]]:
    """Context manager: inside it, every call of an Attention module appends its softmax weights (detached) to
    the yielded list, in call order. Each entry is (B, heads, Nq, Nk); for windowed attention (Swin) the batch
    axis holds B * windows."""
    modules = attention_modules(model)
    if not modules:
        raise VitlabError(f"{type(model).__name__} has no vitlab Attention module: nothing to record")
    recorded: list[Tensor] = []
    saved_flags = [m.fused for m in modules]
    handles = []
    try:
        for m in modules:
            m.fused = False
            handles.append(m.weights.register_forward_hook(lambda _mod, _inp, out: recorded.append(out.detach())))
        yield recorded
    finally:
        for h in handles:
            h.remove()
        for m, flag in zip(modules, saved_flags):
            m.fused = flag


def record_attention(model: nn.Module, x: Tensor, *, grad: bool = False) -> tuple[Tensor, list[Tensor]]:
    """Run `model(x)` once on the explicit attention path. Returns (output, weights), weights one
    (B, heads, Nq, Nk) tensor per attention call in call order (one per block for ViT), each row summing to 1.
    Without `grad` the forward runs under no_grad."""
    with recording(model) as recorded, torch.set_grad_enabled(grad and torch.is_grad_enabled()):
        out = model(x)
    return out, list(recorded)


def attention_maps(model: nn.Module, x: Tensor) -> list[Tensor]:
    """Softmax attention weights of every attention call of `model(x)`: a list of (B, heads, N, N)."""
    return record_attention(model, x)[1]
