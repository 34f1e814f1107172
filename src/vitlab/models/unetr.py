"""UNETR (Hatamizadeh et al., "UNETR: Transformers for 3D Medical Image Segmentation", WACV 2022), 3-D and 2-D.

    x (B, C, *S) -> ViT on 16^3 patches (no class token) -> hidden states z3, z6, z9, z12 (of 12 layers)
    z_i (B, N, dim) -> reshape to a volume (B, dim, *S/16) -> deconvolution (x2) + conv blocks up to S/8, S/4, S/2
    decoder: z12 -> deconv x2, concat skip(z9) -> conv block -> ... -> concat stem(x) at S -> 1x1 conv -> logits

The layout follows MONAI's `monai.networks.nets.UNETR` exactly (the ecosystem's reference; its state dicts load with
vitlab.convert.monai_unetr): the skips are the outputs of blocks 3, 6, 9 (1-based: 4, 7, 10 of 12; generally the
depth split in four) and the final LayerNorm output; "conv blocks" are nnU-Net residual blocks (conv3-norm-LeakyReLU,
conv3-norm, + 1x1 projection, LeakyReLU 0.01), instance norm without affine, convolutions without bias.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from ..errors import VitlabError
from ..layers.nd import conv_nd, conv_transpose_nd, norm_nd, resample_pos_embed_nd, tokens_to_map
from ..variants import register_model
from .unet import default_norm
from .vit_encoder import ViTEncoder


@dataclass
class UNETRConfig:
    spatial_dims: int = 3                   # 3: volumes (B, C, D, H, W), the paper; 2: images
    img_size: int = 96                      # input side (the paper: 96^3 crops of BTCV)
    in_chans: int = 1                       # input channels (CT: 1)
    num_classes: int = 14                   # output classes, background included (BTCV: 13 organs + background)
    patch_size: int = 16                    # ViT patch side (the paper and MONAI: 16)
    dim: int = 768                          # ViT hidden size (ViT-B)
    depth: int = 12                         # transformer layers
    num_heads: int = 12
    mlp_dim: int = 3072                     # MLP hidden width
    qkv_bias: bool = False                  # MONAI's default: no bias on q/k/v
    feature_size: int = 16                  # channels of the stem; the skips have 2x, 4x, 8x this
    norm: str = "instance_noaffine"         # conv-block norm (layers.nd.norm_nd); MONAI's "instance"
    res_block: bool = True                  # residual conv blocks (MONAI's default) or plain two-conv blocks
    conv_block: bool = True                 # conv blocks after each deconvolution of the skip paths
    norm_eps: float = 1e-5                  # ViT LayerNorm epsilon (torch's default, as MONAI)
    drop_rate: float = 0.0                  # dropout in the ViT
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    mean: tuple[float, ...] = ()            # input normalisation; () = 0.5 per channel
    std: tuple[float, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mean, self.std = default_norm(self.mean, self.in_chans), default_norm(self.std, self.in_chans)


class ConvBlock(nn.Module):
    """nnU-Net's block: conv3-norm-LeakyReLU, conv3-norm, (+ 1x1 conv-norm projection of the input when
    residual), LeakyReLU(0.01). (B, cin, *S) -> (B, cout, *S)."""

    def __init__(self, cin: int, cout: int, spatial_dims: int, norm: str, residual: bool) -> None:
        super().__init__()
        conv = conv_nd(spatial_dims)
        self.conv1 = conv(cin, cout, 3, padding=1, bias=False)
        self.norm1 = norm_nd(norm, spatial_dims, cout)
        self.conv2 = conv(cout, cout, 3, padding=1, bias=False)
        self.norm2 = norm_nd(norm, spatial_dims, cout)
        self.act = nn.LeakyReLU(0.01, inplace=True)
        self.residual = residual
        self.conv3 = conv(cin, cout, 1, bias=False) if residual and cin != cout else None
        self.norm3 = norm_nd(norm, spatial_dims, cout) if self.conv3 is not None else None

    def forward(self, x: Tensor) -> Tensor:
        out = self.norm2(self.conv2(self.act(self.norm1(self.conv1(x)))))
        if self.residual:
            out = out + (x if self.conv3 is None else self.norm3(self.conv3(x)))
        return self.act(out)


def _deconv(cin: int, cout: int, spatial_dims: int) -> nn.Module:
    """2x up-sampling by a transposed convolution (kernel 2, stride 2, no bias)."""
    return conv_transpose_nd(spatial_dims)(cin, cout, kernel_size=2, stride=2, bias=False)


class SkipPath(nn.Module):
    """A hidden state as a map, up-sampled to its decoder level: deconv (dim -> cout), then `steps` times
    [deconv + ConvBlock] (UNETR's green blocks; MONAI's UnetrPrUpBlock). (B, dim, *g) -> (B, cout, *g * 2^(steps+1))."""

    def __init__(self, dim: int, cout: int, steps: int, cfg: UNETRConfig) -> None:
        super().__init__()
        d = cfg.spatial_dims
        self.up = _deconv(dim, cout, d)
        self.blocks = nn.ModuleList(
            nn.Sequential(_deconv(cout, cout, d), ConvBlock(cout, cout, d, cfg.norm, cfg.res_block))
            if cfg.conv_block else _deconv(cout, cout, d) for _ in range(steps))

    def forward(self, x: Tensor) -> Tensor:
        x = self.up(x)
        for block in self.blocks:
            x = block(x)
        return x


class UpBlock(nn.Module):
    """Decoder step: deconv (cin -> cout, x2), concatenation with the skip, ConvBlock (2 cout -> cout).
    x (B, cin, *S), skip (B, cout, *2S) -> (B, cout, *2S)."""

    def __init__(self, cin: int, cout: int, cfg: UNETRConfig) -> None:
        super().__init__()
        self.up = _deconv(cin, cout, cfg.spatial_dims)
        self.conv = ConvBlock(2 * cout, cout, cfg.spatial_dims, cfg.norm, cfg.res_block)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class UNETR(nn.Module):
    """UNETR segmenter. x (B, in_chans, *S) normalised, S = img_size per side -> logits (B, num_classes, *S).

    `forward_skips(x)` returns the five maps the decoder joins, shallow to deep (see its docstring)."""

    def __init__(self, cfg: UNETRConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        cfg = UNETRConfig(**{**asdict(cfg or UNETRConfig()), **kwargs})
        if cfg.patch_size < 4 or cfg.patch_size & (cfg.patch_size - 1):
            raise VitlabError(f"patch_size must be a power of two >= 4 (the decoder doubles up to it), "
                              f"got {cfg.patch_size}")
        if cfg.depth < cfg.patch_size.bit_length() - 1:
            raise VitlabError(f"depth {cfg.depth} is below the number of layers UNETR taps")
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        d, f = cfg.spatial_dims, cfg.feature_size
        self.vit = ViTEncoder(d, cfg.img_size, cfg.patch_size, cfg.in_chans, cfg.dim, cfg.depth, cfg.num_heads,
                              cfg.mlp_dim, cfg.qkv_bias, cfg.norm_eps, cfg.drop_rate, cfg.attn_drop_rate,
                              cfg.drop_path_rate)
        # patch 2^L: the stem at S, L-1 skip paths from evenly spaced layers at S/2 .. S/2^(L-1), the last layer at
        # S/2^L. For 16 px patches and 12 layers: hidden states 3, 6, 9 (0-based, as MONAI's hidden_states_out) at
        # S/2, S/4, S/8 with 2f, 4f, 8f channels, the final (normed) tokens at S/16.
        levels = cfg.patch_size.bit_length() - 1
        widths = [f * 2 ** i for i in range(levels)]                   # f, 2f, 4f, 8f for 16 px patches
        self.taps = [cfg.depth * (i + 1) // levels for i in range(levels - 1)]
        self.stem = ConvBlock(cfg.in_chans, f, d, cfg.norm, cfg.res_block)
        self.skips = nn.ModuleList(SkipPath(cfg.dim, widths[i + 1], levels - 2 - i, cfg) for i in range(levels - 1))
        self.ups = nn.ModuleList([UpBlock(cfg.dim, widths[-1], cfg)] +
                                 [UpBlock(widths[i], widths[i - 1], cfg) for i in range(levels - 1, 0, -1)])
        self.head = conv_nd(d)(f, cfg.num_classes, kernel_size=1)

    def adapt_state_dict(self, state_dict: dict[str, Tensor], mode: str = "trilinear", **_: Any
                         ) -> dict[str, Tensor]:
        """A checkpoint of another input size: its position embedding resampled to our grid (cube/square)."""
        pe = state_dict.get("vit.pos_embed")
        if pe is not None and pe.shape != self.vit.pos_embed.shape:
            old = _cube(pe.shape[1], len(self.vit.grid_size))
            state_dict = {**state_dict, "vit.pos_embed": resample_pos_embed_nd(pe, self.vit.grid_size, old)}
        return state_dict

    def forward_skips(self, x: Tensor) -> list[Tensor]:
        """[stem (B, f, *S), skip(z3) (B, 2f, *S/2), skip(z6) (B, 4f, *S/4), skip(z9) (B, 8f, *S/8),
        z12 as a map (B, dim, *S/16)] for 16 px patches."""
        tokens, hidden = self.vit(x)
        grid = self.vit.grid_size
        maps = [self.stem(x)]
        maps += [path(tokens_to_map(hidden[t], grid)) for path, t in zip(self.skips, self.taps)]   # S/2 .. S/2^(L-1)
        return maps + [tokens_to_map(tokens, grid)]

    def forward(self, x: Tensor) -> Tensor:
        *skips, x = self.forward_skips(x)
        for up, skip in zip(self.ups, reversed(skips)):
            x = up(x, skip)
        return self.head(x)                                            # (B, num_classes, *S)


def _cube(n: int, dims: int) -> tuple[int, ...]:
    side = round(n ** (1 / dims))
    if side ** dims != n:
        raise VitlabError(f"{n} position embeddings are not a {dims}-D cube grid")
    return (side,) * dims


# --- variants ----------------------------------------------------------------------------------------------------
def _unetr(overrides: dict[str, Any], **defaults: Any) -> UNETR:
    return UNETR(UNETRConfig(**{**defaults, **overrides}))


@register_model(task="segmentation")
def unetr_b16_3d_96(**kw: Any) -> UNETR:
    """The paper's UNETR: ViT-B/16 on 96^3 one-channel volumes, feature size 16, 14 classes (BTCV); 92.6M params."""
    return _unetr(kw)


@register_model(task="segmentation")
def unetr_b16_2d_224(**kw: Any) -> UNETR:
    """UNETR in 2-D: ViT-B/16 on 224x224 RGB, feature size 16, 9 classes (Synapse slices, as TransUNet)."""
    return _unetr(kw, spatial_dims=2, img_size=224, in_chans=3, num_classes=9)


SMALL = dict(dim=192, depth=8, num_heads=3, mlp_dim=768, feature_size=16)


@register_model(task="segmentation")
def unetr_small_3d_32(**kw: Any) -> UNETR:
    """UNETR for 32^3 volumes (4 classes): 8^3 px patches (a 4^3 token grid), ViT d 192 / 8 layers / 3 heads."""
    return _unetr(kw, **{**SMALL, "img_size": 32, "patch_size": 8, "num_classes": 4})


@register_model(task="segmentation")
def unetr_small_2d_64(**kw: Any) -> UNETR:
    """UNETR for 64x64 `scenes` (7 classes): 8 px patches (8x8 tokens), ViT d 192 / 8 layers / 3 heads."""
    return _unetr(kw, **{**SMALL, "spatial_dims": 2, "img_size": 64, "in_chans": 3, "num_classes": 7,
                         "patch_size": 8})
