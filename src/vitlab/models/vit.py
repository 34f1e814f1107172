"""Vision Transformer (Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021).

    z0 = [x_class; x_p^1 E; ...; x_p^N E] + E_pos                    (eq. 1)
    z'_l = MSA(LN(z_{l-1})) + z_{l-1}                                 (eq. 2)
    z_l  = MLP(LN(z'_l)) + z'_l                                       (eq. 3)
    y    = LN(z_L^0) -> head                                          (eq. 4)
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.utils.checkpoint
import torch.nn as nn
from torch import Tensor

from ..errors import VitlabError
from ..layers import (Attention, DropPath, Mlp, PatchEmbed, drop_path_rates, init_transformer_, resample_pos_embed,
                      sincos_2d)
from ..layers.efficient_attention import make_attention
from ..variants import register_model


@dataclass
class ViTConfig:
    img_size: int | tuple[int, int] = 224   # input side in pixels (or (height, width))
    patch_size: int = 16                    # pixels per side of a square patch
    in_chans: int = 3                       # input channels (RGB)
    num_classes: int = 1000                 # classifier outputs; 0 = no head (features only)
    dim: int = 768                          # token width D
    depth: int = 12                         # number of transformer blocks L
    num_heads: int = 12                     # attention heads per block
    mlp_ratio: float = 4.0                  # MLP hidden width = mlp_ratio * dim
    qkv_bias: bool = True                   # bias on the q/k/v projection (the paper has one)
    class_token: bool = True                # prepend a learnable [CLS] token
    pool: str = "cls"                       # "cls": head on [CLS]; "avg": head on the mean of patch tokens
    pos_embed: str = "learned"              # "learned" (the paper), "sincos" (fixed 2-D) or "none"
    norm_eps: float = 1e-6                  # LayerNorm epsilon (timm 1e-6, HF transformers 1e-12)
    fc_norm: bool = False                   # avg pool: LayerNorm after pooling instead of before (timm/MAE style)
    representation_size: int = 0            # >0: pre-logits Linear + tanh before the head (ViT pre-training; HF pooler)
    drop_rate: float = 0.0                  # dropout after position embedding and before the head
    attn_drop_rate: float = 0.0             # dropout on attention weights
    drop_path_rate: float = 0.0             # stochastic depth, rising linearly to this rate over the blocks
    attention: str = "full"                 # full|local|strided|axial|linformer|kv_pool (layers.efficient_attention)
    attn_window: int = 0                    # local/strided: block length l (0 = ceil(sqrt(patches)), O(n sqrt n))
    linformer_k: int = 64                   # linformer: keys/values projected to k positions
    sr_ratio: int = 2                       # kv_pool: keys/values from the grid reduced r x r
    weight_init: str = ""                   # "": truncated-normal 0.02 (timm's default); "jax": the original ViT's
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)   # input normalisation the weights expect
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    extra: dict[str, Any] = field(default_factory=dict)  # room for relatives' settings


class Block(nn.Module):
    """Pre-LN transformer block (eqs. 2-3). x (B, N, dim) -> (B, N, dim)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0, norm_eps: float = 1e-6,
                 attn: nn.Module | None = None) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = attn if attn is not None else Attention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """ViT classifier. x (B, 3, H, W) normalised -> logits (B, num_classes).

    forward_features -> tokens (B, num_prefix_tokens + N, dim) after the final LayerNorm;
    forward_head(tokens, pre_logits=True) -> pooled (B, dim).
    """

    config_class: type[ViTConfig] = ViTConfig   # relatives (DeiT) extend the config dataclass

    def __init__(self, cfg: ViTConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        cfg = self.config_class(**{**asdict(cfg or self.config_class()), **kwargs})
        if cfg.pool not in ("cls", "avg"):
            raise VitlabError(f"pool must be 'cls' or 'avg', got {cfg.pool!r}")
        if cfg.pool == "cls" and not cfg.class_token:
            raise VitlabError("pool='cls' needs class_token=True")
        if cfg.weight_init not in ("", "jax"):
            raise VitlabError(f"weight_init must be '' (truncated normal 0.02) or 'jax', got {cfg.weight_init!r}")
        if cfg.pos_embed not in ("learned", "sincos", "none"):
            raise VitlabError(f"pos_embed must be 'learned', 'sincos' or 'none', got {cfg.pos_embed!r}")
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.dim = cfg.dim
        self.patch_embed = PatchEmbed(cfg.img_size, cfg.patch_size, cfg.in_chans, cfg.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim)) if cfg.class_token else None
        self.num_prefix_tokens = int(cfg.class_token) + self._extra_prefix_tokens()
        self._init_pos_embed()
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        self.blocks = nn.Sequential(*[self.make_block(i, dpr) for i, dpr in
                                      enumerate(drop_path_rates(cfg.drop_path_rate, cfg.depth))])
        use_fc_norm = cfg.pool == "avg" and cfg.fc_norm
        self.norm = nn.Identity() if use_fc_norm else nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.fc_norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps) if use_fc_norm else nn.Identity()
        # The paper's pre-training head has one hidden layer (tanh); fine-tuning drops it (ViT §3.1).
        self.pre_logits = nn.Sequential() if not cfg.representation_size else nn.Sequential(OrderedDict(
            fc=nn.Linear(cfg.dim, cfg.representation_size), act=nn.Tanh()))
        head_dim = cfg.representation_size or cfg.dim
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(head_dim, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.grad_checkpointing = False         # True: recompute block activations in backward (saves memory)
        self.init_weights()

    # --- pieces relatives override -------------------------------------------------------------------------
    def _extra_prefix_tokens(self) -> int:
        """Prefix tokens besides [CLS] (DeiT's distillation token)."""
        return 0

    def make_block(self, index: int, drop_path: float) -> nn.Module:
        c = self.cfg
        attn = make_attention(c.attention, c.dim, c.num_heads, grid_size=self.grid_size,
                              num_prefix_tokens=self.num_prefix_tokens, qkv_bias=c.qkv_bias,
                              attn_drop=c.attn_drop_rate, proj_drop=c.drop_rate, window=c.attn_window,
                              linformer_k=c.linformer_k, sr_ratio=c.sr_ratio)
        return Block(c.dim, c.num_heads, c.mlp_ratio, c.qkv_bias, c.drop_rate, c.attn_drop_rate, drop_path,
                     c.norm_eps, attn=attn)

    def prefix_tokens(self, batch: int) -> list[Tensor]:
        """Tokens placed before the patches, each (B, 1, dim)."""
        return [self.cls_token.expand(batch, -1, -1)] if self.cls_token is not None else []

    # --- position embedding ------------------------------------------------------------------------------------
    @property
    def grid_size(self) -> tuple[int, int]:
        return self.patch_embed.grid_size

    def _init_pos_embed(self) -> None:
        n = self.num_prefix_tokens + self.patch_embed.num_patches
        if self.cfg.pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, n, self.cfg.dim))
        elif self.cfg.pos_embed == "sincos":
            grid = sincos_2d(self.grid_size, self.cfg.dim)                      # (N, dim)
            prefix = torch.zeros(self.num_prefix_tokens, self.cfg.dim)          # prefix tokens get no position
            self.register_buffer("pos_embed", torch.cat([prefix, grid]).unsqueeze(0), persistent=False)
        else:
            self.pos_embed = None

    def init_weights(self) -> None:
        """weight_init "": truncated-normal(0.02) linear weights and tokens, zero biases (timm's default).
        "jax": the original ViT's (google-research/vision_transformer, timm's weight_init='jax'): xavier-uniform
        linear weights, MLP biases normal(1e-6), a zero head. Its scale follows the width, so a narrow model
        (dim 64: xavier std 0.08-0.09 against 0.02) starts off the flat start where the 0.02 init sits for hundreds
        of steps (benchmarks/results/vit_plateau/README.md)."""
        if isinstance(self.pos_embed, nn.Parameter):
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        init_transformer_(self)
        if self.cfg.weight_init == "jax":
            self._init_jax_linears()
        # The patch projection is a linear map on flattened patches: initialise it like one (fan-in = C*p*p).
        w = self.patch_embed.proj.weight
        nn.init.trunc_normal_(w.view(w.shape[0], -1), std=math.sqrt(1.0 / w[0].numel()))
        nn.init.zeros_(self.patch_embed.proj.bias)

    def _init_jax_linears(self) -> None:
        for name, m in self.named_modules():
            if not isinstance(m, nn.Linear):
                continue
            if name.startswith("head"):                  # head, and DeiT's head_dist
                nn.init.zeros_(m.weight)
                nn.init.zeros_(m.bias)
                continue
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.normal_(m.bias, std=1e-6) if ".mlp." in f".{name}." else nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        """Parameter names excluded from weight decay besides norms and biases."""
        return {"cls_token", "pos_embed", "dist_token"}

    def adapt_state_dict(self, state_dict: dict[str, Tensor], mode: str = "bicubic",
                         antialias: bool = False) -> dict[str, Tensor]:
        """Make a checkpoint of another input size fit: resample its learned position embedding to our grid."""
        state_dict = dict(state_dict)
        old_grid = state_dict.pop("_grid_size", None)   # converters record a non-square source grid here
        pe = state_dict.get("pos_embed")
        if isinstance(self.pos_embed, nn.Parameter) and pe is not None and pe.shape != self.pos_embed.shape:
            state_dict["pos_embed"] = resample_pos_embed(pe, self.grid_size, old_grid, self.num_prefix_tokens,
                                                         mode=mode, antialias=antialias)
        return state_dict

    # --- forward -----------------------------------------------------------------------------------------------
    def embed(self, x: Tensor) -> Tensor:
        """Patches, prefix tokens and position embedding (eq. 1): (B, 3, H, W) -> (B, prefix + N, dim)."""
        x = self.patch_embed(x)                                              # (B, N, dim)
        x = torch.cat(self.prefix_tokens(x.shape[0]) + [x], dim=1)          # (B, prefix + N, dim)
        if self.pos_embed is not None:
            x = x + self.pos_embed.to(x.dtype)
        return self.pos_drop(x)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.embed(x)
        if self.grad_checkpointing and torch.is_grad_enabled():
            # activation checkpointing: keep only block inputs, recompute each block in backward (the RNG state
            # is replayed, so dropout / drop-path masks are the same and the gradients equal the plain path's)
            for block in self.blocks:
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
        else:
            x = self.blocks(x)
        return self.norm(x)

    def pool(self, x: Tensor) -> Tensor:
        """tokens (B, prefix + N, dim) -> (B, dim)."""
        if self.cfg.pool == "avg":
            return self.fc_norm(x[:, self.num_prefix_tokens:].mean(dim=1))
        return x[:, 0]

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(self.pre_logits(self.pool(x)))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


# --- variants ----------------------------------------------------------------------------------------------------
# The paper's Table 1: (dim, depth, heads); Ti and S come from DeiT.
SIZES: dict[str, dict[str, int]] = {
    "micro": dict(dim=64, depth=6, num_heads=4),      # small-image teaching size, trains in minutes on a CPU
    "tiny": dict(dim=192, depth=12, num_heads=3),
    "small": dict(dim=384, depth=12, num_heads=6),
    "base": dict(dim=768, depth=12, num_heads=12),
    "large": dict(dim=1024, depth=24, num_heads=16),
    "huge": dict(dim=1280, depth=32, num_heads=16),
}


def _vit(size: str, patch_size: int, img_size: int, overrides: dict[str, Any], **defaults: Any) -> VisionTransformer:
    return VisionTransformer(ViTConfig(**{**SIZES[size], "patch_size": patch_size, "img_size": img_size,
                                          **defaults, **overrides}))


# ImageNet variants as timm names them.
@register_model
def vit_tiny_patch16_224(**kw: Any) -> VisionTransformer:
    """ViT-Tiny/16 at 224x224."""
    return _vit("tiny", 16, 224, kw)


@register_model
def vit_tiny_patch16_384(**kw: Any) -> VisionTransformer:
    """ViT-Tiny/16 at 384x384."""
    return _vit("tiny", 16, 384, kw)


@register_model
def vit_small_patch32_224(**kw: Any) -> VisionTransformer:
    """ViT-Small/32 at 224x224."""
    return _vit("small", 32, 224, kw)


@register_model
def vit_small_patch32_384(**kw: Any) -> VisionTransformer:
    """ViT-Small/32 at 384x384."""
    return _vit("small", 32, 384, kw)


@register_model
def vit_small_patch16_224(**kw: Any) -> VisionTransformer:
    """ViT-Small/16 at 224x224."""
    return _vit("small", 16, 224, kw)


@register_model
def vit_small_patch16_384(**kw: Any) -> VisionTransformer:
    """ViT-Small/16 at 384x384."""
    return _vit("small", 16, 384, kw)


@register_model
def vit_small_patch8_224(**kw: Any) -> VisionTransformer:
    """ViT-Small/8 at 224x224."""
    return _vit("small", 8, 224, kw)


@register_model
def vit_base_patch32_224(**kw: Any) -> VisionTransformer:
    """ViT-Base/32 at 224x224."""
    return _vit("base", 32, 224, kw)


@register_model
def vit_base_patch32_384(**kw: Any) -> VisionTransformer:
    """ViT-Base/32 at 384x384."""
    return _vit("base", 32, 384, kw)


@register_model
def vit_base_patch16_224(**kw: Any) -> VisionTransformer:
    """ViT-Base/16 at 224x224."""
    return _vit("base", 16, 224, kw)


@register_model
def vit_base_patch16_384(**kw: Any) -> VisionTransformer:
    """ViT-Base/16 at 384x384."""
    return _vit("base", 16, 384, kw)


@register_model
def vit_base_patch8_224(**kw: Any) -> VisionTransformer:
    """ViT-Base/8 at 224x224."""
    return _vit("base", 8, 224, kw)


@register_model
def vit_large_patch32_224(**kw: Any) -> VisionTransformer:
    """ViT-Large/32 at 224x224."""
    return _vit("large", 32, 224, kw)


@register_model
def vit_large_patch32_384(**kw: Any) -> VisionTransformer:
    """ViT-Large/32 at 384x384."""
    return _vit("large", 32, 384, kw)


@register_model
def vit_large_patch16_224(**kw: Any) -> VisionTransformer:
    """ViT-Large/16 at 224x224."""
    return _vit("large", 16, 224, kw)


@register_model
def vit_large_patch16_384(**kw: Any) -> VisionTransformer:
    """ViT-Large/16 at 384x384."""
    return _vit("large", 16, 384, kw)


@register_model
def vit_large_patch14_224(**kw: Any) -> VisionTransformer:
    """ViT-Large/14 at 224x224."""
    return _vit("large", 14, 224, kw)


@register_model
def vit_huge_patch14_224(**kw: Any) -> VisionTransformer:
    """ViT-Huge/14 at 224x224."""
    return _vit("huge", 14, 224, kw)


# Small-image variants (8-64 px data: digits, MNIST, CIFAR, shapes); the name says patch and input size.
@register_model
def vit_micro_patch2_8(**kw: Any) -> VisionTransformer:
    """ViT-Micro/2 at 8x8."""
    return _vit("micro", 2, 8, kw)


@register_model
def vit_micro_patch2_16(**kw: Any) -> VisionTransformer:
    """ViT-Micro/2 at 16x16."""
    return _vit("micro", 2, 16, kw)


@register_model
def vit_micro_patch4_32(**kw: Any) -> VisionTransformer:
    """ViT-Micro/4 at 32x32."""
    return _vit("micro", 4, 32, kw)


@register_model
def vit_micro_patch8_64(**kw: Any) -> VisionTransformer:
    """ViT-Micro/8 at 64x64."""
    return _vit("micro", 8, 64, kw)


@register_model
def vit_tiny_patch2_8(**kw: Any) -> VisionTransformer:
    """ViT-Tiny/2 at 8x8."""
    return _vit("tiny", 2, 8, kw)


@register_model
def vit_tiny_patch4_32(**kw: Any) -> VisionTransformer:
    """ViT-Tiny/4 at 32x32."""
    return _vit("tiny", 4, 32, kw)


@register_model
def vit_tiny_patch8_64(**kw: Any) -> VisionTransformer:
    """ViT-Tiny/8 at 64x64."""
    return _vit("tiny", 8, 64, kw)


@register_model
def vit_small_patch4_32(**kw: Any) -> VisionTransformer:
    """ViT-Small/4 at 32x32."""
    return _vit("small", 4, 32, kw)


@register_model
def vit_small_patch8_64(**kw: Any) -> VisionTransformer:
    """ViT-Small/8 at 64x64."""
    return _vit("small", 8, 64, kw)
