"""A plain ViT encoder for dense prediction (UNETR, SETR, TransUNet): patch tokens of an image or a volume, no class
token, the hidden states of every block kept (the decoders tap intermediate layers).

The blocks are vitlab's ViT Block (models/vit.py) with the one Attention (vitlab.layers), so vitlab.explain records
their attention; `init_encoder_from` fills the encoder from a ViT/DeiT checkpoint, position embeddings resampled.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
import torch.nn as nn
from torch import Tensor

from ..errors import VitlabError
from ..layers import Mlp, drop_path_rates, init_transformer_
from ..layers.nd import PatchEmbedNd, resample_pos_embed_nd
from .vit import Block

log = logging.getLogger(__name__)


class ViTEncoder(nn.Module):
    """x (B, in_chans, *img_size) -> (tokens (B, N, dim) after the final LayerNorm, [hidden (B, N, dim) after each
    block, before any norm]); N = prod(img_size / patch_size), row-major over the (d,) h, w grid."""

    def __init__(self, spatial_dims: int, img_size: int | tuple[int, ...], patch_size: int, in_chans: int, dim: int,
                 depth: int, num_heads: int, mlp_dim: int, qkv_bias: bool = True, norm_eps: float = 1e-6,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise VitlabError(f"hidden size {dim} is not divisible by num_heads {num_heads}")
        self.patch_embed = PatchEmbedNd(img_size, patch_size, in_chans, dim, spatial_dims)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, dim))
        self.pos_drop = nn.Dropout(drop_rate)
        self.blocks = nn.ModuleList()
        for dpr in drop_path_rates(drop_path_rate, depth):
            block = Block(dim, num_heads, mlp_dim / dim, qkv_bias, drop_rate, attn_drop_rate, dpr, norm_eps)
            if block.mlp.fc1.out_features != mlp_dim:          # int(dim * ratio) rounded below mlp_dim
                block.mlp = Mlp(dim, mlp_dim, drop=drop_rate)
            self.blocks.append(block)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        init_transformer_(self)
        w = self.patch_embed.proj.weight                       # a linear map on flattened patches: fan-in init
        nn.init.trunc_normal_(w.view(w.shape[0], -1), std=math.sqrt(1.0 / w[0].numel()))
        nn.init.zeros_(self.patch_embed.proj.bias)

    @property
    def grid_size(self) -> tuple[int, ...]:
        return self.patch_embed.grid_size

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        x = self.pos_drop(self.patch_embed(x) + self.pos_embed.to(x.dtype))   # (B, N, dim)
        hidden = []
        for block in self.blocks:
            x = block(x)
            hidden.append(x)
        return self.norm(x), hidden


def init_encoder_from(encoder: ViTEncoder, source: nn.Module | str | Path, load_patch_embed: bool = True
                      ) -> dict[str, list[str]]:
    """Initialise `encoder` from a ViT/DeiT: a vitlab VisionTransformer module, or any checkpoint vitlab reads
    (a vitlab directory, a timm/HF/npz file). Blocks and final norm are copied; the position embedding loses its
    prefix tokens ([CLS], distillation) and is resampled to the encoder's grid (2-D -> 3-D: repeated along depth,
    then trilinear); the patch projection is adapted when it can be: channels summed (RGB -> 1 channel) or
    repeated, a 2-D kernel inflated to 3-D (repeated along depth / p, as I3D), the kernel resized to another patch.
    Returns {"loaded": [...], "skipped": [...]} (our key names)."""
    if isinstance(source, nn.Module):
        sd, num_prefix, grid = source.state_dict(), int(getattr(source, "num_prefix_tokens", 0)), \
            tuple(getattr(source, "grid_size", ()) or ()) or None
    else:
        from ..checkpoint import load_model           # vitlab.checkpoint builds on the models: import late
        model = load_model(source)
        sd, num_prefix, grid = model.state_dict(), int(getattr(model, "num_prefix_tokens", 0)), \
            tuple(getattr(model, "grid_size", ()) or ()) or None
    if "blocks.0.attn.qkv.weight" not in sd:
        raise VitlabError(f"{source if not isinstance(source, nn.Module) else type(source).__name__}: not a ViT "
                          f"(no blocks.0.attn.qkv.weight)")
    own = encoder.state_dict()
    new: dict[str, Tensor] = {}
    for k, v in sd.items():
        if k.startswith(("blocks.", "norm.")) and k in own:
            if own[k].shape != v.shape:
                raise VitlabError(f"{k}: {tuple(v.shape)} in the checkpoint vs {tuple(own[k].shape)} in the encoder "
                                  f"(another width or depth)")
            new[k] = v
    if count := sum(1 for k in own if k.startswith("blocks.")) - sum(1 for k in new if k.startswith("blocks.")):
        raise VitlabError(f"the checkpoint has fewer blocks than the encoder ({count} block tensors unfilled)")
    if "pos_embed" in sd:
        grid_part = sd["pos_embed"][:, num_prefix:]                   # prefix tokens have no place here
        new["pos_embed"] = resample_pos_embed_nd(grid_part, encoder.grid_size, grid)
    w = sd.get("patch_embed.proj.weight")
    if load_patch_embed and w is not None and w.dim() == 4:
        new["patch_embed.proj.weight"] = adapt_patch_kernel(w, own["patch_embed.proj.weight"].shape)
        new["patch_embed.proj.bias"] = sd["patch_embed.proj.bias"]
    skipped = sorted(k for k in own if k not in new)
    with torch.no_grad():
        encoder.load_state_dict({**own, **new})
    if skipped:
        log.info("encoder initialised; left at their own values: %s", ", ".join(skipped))
    return {"loaded": sorted(new), "skipped": skipped}


def adapt_patch_kernel(w: Tensor, shape: torch.Size | tuple[int, ...]) -> Tensor:
    """A 2-D patch projection (dim, C, p, p) -> `shape` (dim, C', *k): channels summed to 1 or tiled, the kernel
    resized (bicubic) to k, inflated along depth for 3-D with the weight divided by the depth (same response to a
    volume constant along depth)."""
    import torch.nn.functional as F

    dim, cin = shape[0], shape[1]
    if w.shape[0] != dim:
        raise VitlabError(f"patch embedding width {w.shape[0]} vs {dim}")
    if w.shape[1] != cin:
        w = w.sum(1, keepdim=True) if cin == 1 else w.repeat(1, math.ceil(cin / w.shape[1]), 1, 1)[:, :cin] \
            * (w.shape[1] / cin)
    k = tuple(shape[-2:])
    if tuple(w.shape[-2:]) != k:
        w = F.interpolate(w.float(), size=k, mode="bicubic", align_corners=False) * (w.shape[-1] * w.shape[-2]) \
            / (k[0] * k[1])
    if len(shape) == 5:
        w = w.unsqueeze(2).repeat(1, 1, shape[2], 1, 1) / shape[2]
    return w.contiguous()
