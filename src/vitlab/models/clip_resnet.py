"""CLIP's modified ResNet image tower (Radford et al. 2021, §2.4 "Choosing and Scaling a Model").

Three changes to ResNet-D-like bottlenecks, all from the paper and OpenAI's release:
    stem      3x3/2 conv (width/2) -> 3x3 (width/2) -> 3x3 (width), each BN + ReLU, then a 2x2 average pool
    blocks    anti-aliased strides (Zhang 2019): the 3x3 conv keeps the resolution and an average pool of size
              `stride` follows it; the shortcut also pools before its 1x1 conv
    head      attention pooling: one multi-head attention layer whose query is the globally averaged feature,
              over [mean; grid] tokens with a learned position embedding, projected to the joint space

    x (B, 3, H, W) -> forward_features -> (B, 4 * width * 2^(S-1), H/stride, W/stride)
                   -> forward_head(map, pre_logits=True) -> (B, output_dim)

Names follow OpenAI's `ModifiedResNet` (conv1..3/bn1..3, layerN.i.conv1.., downsample.0/1, attnpool.q_proj..),
so its `visual.*` keys equal ours (the key table: vitlab.convert.hf_clip.OPENAI_CLIP_RN_KEYS).
"""
from __future__ import annotations

from collections import OrderedDict
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..errors import VitlabError
from ..layers.pos_embed import resample_pos_embed
from .resnet import Bottleneck


class AntiAliasedBottleneck(Bottleneck):
    """torchvision's bottleneck with CLIP's anti-aliased stride: conv2 at stride 1, then AvgPool(stride); the
    shortcut is AvgPool(stride) -> 1x1 conv -> BN. (B, cin, H, W) -> (B, 4 * width, H/stride, W/stride)."""

    def __init__(self, cin: int, width: int, stride: int = 1, drop_path: float = 0.0) -> None:
        super().__init__(cin, width, stride=1, drop_path=drop_path)
        cout = width * self.expansion
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.downsample = None
        if stride > 1 or cin != cout:   # "-1" / "0" / "1": OpenAI's names, so its keys are downsample.0/1
            self.downsample = nn.Sequential(OrderedDict([
                ("-1", nn.AvgPool2d(stride)), ("0", nn.Conv2d(cin, cout, 1, bias=False)),
                ("1", nn.BatchNorm2d(cout))]))

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.avgpool(self.relu(self.bn2(self.conv2(x))))
        x = self.bn3(self.conv3(x))
        return self.relu(self.drop_path(x) + shortcut)


class AttentionPool2d(nn.Module):
    """One multi-head attention layer over [mean; grid] tokens with the mean token as the only query.

    x (B, C, H, W) -> (B, output_dim). grid = (H, W) the map size the position table is made for.
    """

    def __init__(self, grid: int, dim: int, num_heads: int, output_dim: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise VitlabError(f"attention pooling width {dim} is not divisible by {num_heads} heads")
        self.grid, self.num_heads = grid, num_heads
        self.positional_embedding = nn.Parameter(torch.randn(grid * grid + 1, dim) / dim ** 0.5)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.c_proj = nn.Linear(dim, output_dim)

    def tokens(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, 1 + H*W, C): the mean token first, positions added."""
        B, C, H, W = x.shape                                          # batch, channels, map height, width
        if H * W + 1 != self.positional_embedding.shape[0]:
            raise VitlabError(f"attention pooling is built for a {self.grid}x{self.grid} map, got {H}x{W} "
                              f"(input size {H}x{W} times the tower's stride): build the model with img_size")
        x = x.flatten(2).transpose(1, 2)                              # (B, H*W, C)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)        # (B, 1 + H*W, C)
        return x + self.positional_embedding.to(x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        x = self.tokens(x)
        B, N, C = x.shape                                             # batch, 1 + H*W tokens, channels
        h = self.num_heads
        q = self.q_proj(x[:, :1]).view(B, 1, h, C // h).transpose(1, 2)   # (B, heads, 1, head_dim)
        k = self.k_proj(x).view(B, N, h, C // h).transpose(1, 2)           # (B, heads, N, head_dim)
        v = self.v_proj(x).view(B, N, h, C // h).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)                      # (B, heads, 1, head_dim)
        return self.c_proj(out.transpose(1, 2).reshape(B, C))              # (B, output_dim)

    def attention_weights(self, x: Tensor) -> Tensor:
        """The explicit softmax(q k^T / sqrt(d)) of the pooled (mean) query over all 1 + H*W tokens, the weights
        forward's fused kernel uses: (B, C, H, W) -> (B, heads, 1 + H*W), each row summing to 1 (index 0: the
        mean token itself, then the grid row by row)."""
        x = self.tokens(x)
        B, N, C = x.shape                                             # batch, 1 + H*W tokens, channels
        h = self.num_heads
        q = self.q_proj(x[:, :1]).view(B, 1, h, C // h).transpose(1, 2)   # (B, heads, 1, head_dim)
        k = self.k_proj(x).view(B, N, h, C // h).transpose(1, 2)           # (B, heads, N, head_dim)
        scores = q @ k.transpose(-2, -1) * (C // h) ** -0.5                # (B, heads, 1, N)
        return scores.softmax(dim=-1)[:, :, 0]                             # (B, heads, N)

    def dense(self, x: Tensor) -> Tensor:
        """Each grid position through the value and output projections (MaskCLIP's reading of the pool, Zhou et
        al. 2022): (B, C, H, W) -> (B, H*W, output_dim), in the space the pooled output lives in."""
        return self.c_proj(self.v_proj(self.tokens(x)[:, 1:]))


class CLIPResNet(nn.Module):
    """OpenAI's ModifiedResNet. layers: bottlenecks per stage (RN50: 3, 4, 6, 3); width: the stem's output and
    the first stage's 3x3 width, doubled each stage; heads: attention-pooling heads (RN50: 32)."""

    def __init__(self, layers: tuple[int, ...] = (3, 4, 6, 3), width: int = 64, heads: int = 32,
                 output_dim: int = 1024, img_size: int = 224, in_chans: int = 3) -> None:
        super().__init__()
        if not layers:
            raise VitlabError("a CLIP ResNet needs at least one stage")
        self.stride = 4 * 2 ** (len(layers) - 1)      # stem /4, every stage after the first /2
        if img_size % self.stride:
            raise VitlabError(f"img_size {img_size} is not a multiple of the ResNet tower's stride {self.stride}")
        self.img_size = img_size
        self.conv1 = nn.Conv2d(in_chans, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        self.relu = nn.ReLU(inplace=True)
        cin = width
        for i, depth in enumerate(layers):
            planes = width * 2 ** i
            blocks = [AntiAliasedBottleneck(cin if j == 0 else planes * 4, planes, stride=2 if i > 0 and j == 0
                                            else 1) for j in range(depth)]
            cin = planes * 4
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_stages = len(layers)
        self.num_features = cin                     # channels of the last map (RN50: 2048)
        self.grid = img_size // self.stride
        self.attnpool = AttentionPool2d(self.grid, cin, heads, output_dim)
        self.init_weights()

    def init_weights(self) -> None:
        """OpenAI's: q/k/v/c_proj N(0, C^-0.5), the last BN of each residual branch at zero (each block starts
        as the identity); convolutions keep PyTorch's default."""
        std = self.attnpool.c_proj.in_features ** -0.5
        for proj in (self.attnpool.q_proj, self.attnpool.k_proj, self.attnpool.v_proj, self.attnpool.c_proj):
            nn.init.normal_(proj.weight, std=std)
        for m in self.modules():
            if isinstance(m, AntiAliasedBottleneck):
                nn.init.zeros_(m.bn3.weight)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))                        # (B, width/2, H/2, W/2)
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.avgpool(self.relu(self.bn3(self.conv3(x))))          # (B, width, H/4, W/4)
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return x                                                      # (B, num_features, H/stride, W/stride)

    def forward_head(self, x: Tensor, pre_logits: bool = True) -> Tensor:
        """Attention pooling: (B, num_features, h, w) -> (B, output_dim). There is no classifier (pre_logits is
        accepted for the ViT tower's signature)."""
        return self.attnpool(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def adapt_state_dict(self, state_dict: dict[str, Tensor], mode: str = "bicubic",
                         antialias: bool = False) -> dict[str, Tensor]:
        """Another input size: the attention pool's position table (1 + g*g, C) resampled to our grid."""
        key = "attnpool.positional_embedding"
        if key not in state_dict:
            return state_dict
        pos = resample_pos_embed(state_dict[key][None], (self.grid, self.grid), mode=mode, antialias=antialias)
        return {**state_dict, key: pos[0]}
