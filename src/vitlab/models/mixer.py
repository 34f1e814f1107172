"""MLP-Mixer (Tolstikhin et al., "MLP-Mixer: An all-MLP Architecture for Vision", NeurIPS 2021).

Patches as in ViT, then blocks of two MLPs, no attention:
    U = X + MLP_tokens(LN(X)^T)^T          token mixing: one MLP across the S patches, per channel   (eq. 1)
    Y = U + MLP_channels(LN(U))            channel mixing: one MLP across the C channels, per patch
then LayerNorm, global average pooling over patches, linear head. No position embedding, no class token.
Parameter names follow timm (stem.proj, blocks.i.mlp_tokens.fc1, ...).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch.nn as nn
from torch import Tensor

from ..layers import DropPath, Mlp, PatchEmbed, drop_path_rates
from ..variants import register_model


@dataclass
class MixerConfig:
    img_size: int | tuple[int, int] = 224   # input side; fixed, since token mixing has one weight per patch
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000                 # 0 = no head
    dim: int = 768                          # hidden size C
    depth: int = 12                         # number of Mixer layers
    tokens_mlp_dim: int = 384               # D_S: token-mixing MLP width
    channels_mlp_dim: int = 3072            # D_C: channel-mixing MLP width
    norm_eps: float = 1e-6
    drop_rate: float = 0.0                  # dropout in the MLPs and before the head
    drop_path_rate: float = 0.0             # stochastic depth, rising linearly over the blocks
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    extra: dict[str, Any] = field(default_factory=dict)


class MixerBlock(nn.Module):
    """Token mixing then channel mixing, each pre-LN and residual. x (B, S, C) -> (B, S, C)."""

    def __init__(self, num_patches: int, dim: int, tokens_mlp_dim: int, channels_mlp_dim: int,
                 norm_eps: float = 1e-6, drop: float = 0.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp_tokens = Mlp(num_patches, tokens_mlp_dim, drop=drop)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp_channels = Mlp(dim, channels_mlp_dim, drop=drop)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.mlp_tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2))  # mix over S
        return x + self.drop_path(self.mlp_channels(self.norm2(x)))                            # mix over C


class MlpMixer(nn.Module):
    """MLP-Mixer classifier. x (B, 3, H, W) normalised -> logits (B, num_classes).

    forward_features -> patch tokens after the final LayerNorm (B, S, C); forward_head(pre_logits=True) -> (B, C).
    """

    def __init__(self, cfg: MixerConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        cfg = MixerConfig(**{**asdict(cfg or MixerConfig()), **kwargs})
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.num_prefix_tokens = 0
        self.stem = PatchEmbed(cfg.img_size, cfg.patch_size, cfg.in_chans, cfg.dim)
        n = self.stem.num_patches
        self.blocks = nn.Sequential(*[
            MixerBlock(n, cfg.dim, cfg.tokens_mlp_dim, cfg.channels_mlp_dim, cfg.norm_eps, cfg.drop_rate, dpr)
            for dpr in drop_path_rates(cfg.drop_path_rate, cfg.depth)])
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(cfg.dim, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.init_weights()

    @property
    def patch_embed(self) -> PatchEmbed:
        """ViT-compatible alias (token counting, input size)."""
        return self.stem

    def init_weights(self) -> None:
        """Xavier-uniform linear layers with near-zero biases, zero-initialised head (the paper's JAX code)."""
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                if name == "head":
                    nn.init.zeros_(m.weight)
                else:
                    nn.init.xavier_uniform_(m.weight)
                    nn.init.normal_(m.bias, std=1e-6)
                    continue
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.norm(self.blocks(self.stem(x)))                           # (B, S, C)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(x.mean(dim=1))                                       # global average pool: (B, C)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


# Table 1 of the paper: (patch, dim, depth, D_S, D_C).
SIZES: dict[str, dict[str, int]] = {
    "s": dict(dim=512, depth=8, tokens_mlp_dim=256, channels_mlp_dim=2048),
    "b": dict(dim=768, depth=12, tokens_mlp_dim=384, channels_mlp_dim=3072),
    "l": dict(dim=1024, depth=24, tokens_mlp_dim=512, channels_mlp_dim=4096),
    "micro": dict(dim=128, depth=4, tokens_mlp_dim=64, channels_mlp_dim=512),   # small-image teaching size
}


def _mixer(size: str, patch_size: int, img_size: int, overrides: dict[str, Any]) -> MlpMixer:
    return MlpMixer(MixerConfig(**{**SIZES[size], "patch_size": patch_size, "img_size": img_size, **overrides}))


@register_model
def mixer_s16_224(**kw: Any) -> MlpMixer:
    """Mixer-S/16 at 224x224."""
    return _mixer("s", 16, 224, kw)


@register_model
def mixer_s32_224(**kw: Any) -> MlpMixer:
    """Mixer-S/32 at 224x224."""
    return _mixer("s", 32, 224, kw)


@register_model
def mixer_b16_224(**kw: Any) -> MlpMixer:
    """Mixer-B/16 at 224x224."""
    return _mixer("b", 16, 224, kw)


@register_model
def mixer_b32_224(**kw: Any) -> MlpMixer:
    """Mixer-B/32 at 224x224."""
    return _mixer("b", 32, 224, kw)


@register_model
def mixer_l16_224(**kw: Any) -> MlpMixer:
    """Mixer-L/16 at 224x224."""
    return _mixer("l", 16, 224, kw)


@register_model
def mixer_l32_224(**kw: Any) -> MlpMixer:
    """Mixer-L/32 at 224x224."""
    return _mixer("l", 32, 224, kw)


# Small-image variants (8-64 px data).
@register_model
def mixer_micro_patch4_32(**kw: Any) -> MlpMixer:
    """Mixer-micro/4 at 32x32."""
    return _mixer("micro", 4, 32, kw)


@register_model
def mixer_micro_patch2_8(**kw: Any) -> MlpMixer:
    """Mixer-micro/2 at 8x8."""
    return _mixer("micro", 2, 8, kw)
