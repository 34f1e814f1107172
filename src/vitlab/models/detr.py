"""DETR: DEtection TRansformer (Carion et al., "End-to-End Object Detection with Transformers", ECCV 2020).

    f   = CNN(x)                                  backbone feature map (B, C, H/s, W/s)        (§3.2 "Backbone")
    z0  = Conv1x1(f), flattened to h*w tokens     (B, h*w, d)
    mem = Encoder(z0; pos)                        2-D sine positions added to q, k at every layer
    hs  = Decoder(0; mem, object queries)         N learned queries (their positions), cross-attention to mem
    p(c) = softmax(Linear(hs)),  b = sigmoid(MLP3(hs))     classes + "no object"; boxes (cx, cy, w, h) in [0, 1]

The prediction heads run on every decoder layer's output (through the decoder's final LayerNorm): the last gives
`logits`/`boxes`, the others `aux` (the auxiliary decoding losses of §3.2). The transformer is post-norm as in the
paper; its layers are vitlab.layers.transformer's, its attention the shared Attention family (set `fused = False`
on a module to record its softmax weights: the encoder's self-attention (B, heads, hw, hw), the decoder's
cross-attention (B, heads, N, hw), the figures of §4.2).

Backbones: vitlab's ResNet (any number of stages; the paper's is ResNet-50, stride 32) with frozen batch norm
(the paper and HF: fixed statistics and affine, for fine-tuning from ImageNet weights) or trainable batch norm
(training from scratch on small data); or a ViT whose patch tokens are reshaped to a map (the hybrid idea run the
other way round: a transformer feature extractor under the DETR transformer).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..errors import VitlabError
from ..layers import Linear
from ..layers.transformer import TransformerDecoder, TransformerEncoder
from ..registry import register_model
from .resnet import IMAGENET_MEAN, IMAGENET_STD, ResNet, ResNetConfig
from .vit import VisionTransformer, ViTConfig

RESNET50 = dict(block="bottleneck", layers=(3, 4, 6, 3))
RESNET18 = dict(block="basic", layers=(2, 2, 2, 2))


@dataclass
class DETRConfig:
    img_size: int | tuple[int, int] = 800  # input side the model is trained at (the paper: shorter side 800)
    in_chans: int = 3                       # input channels (RGB)
    num_classes: int = 91                   # object classes without "no object" (COCO: ids up to 90 -> 91)
    num_queries: int = 100                  # object queries N: the most objects one image can have
    dim: int = 256                          # transformer width d
    enc_layers: int = 6                     # encoder layers
    dec_layers: int = 6                     # decoder layers
    num_heads: int = 8                      # attention heads
    ffn_dim: int = 2048                     # FFN hidden width
    dropout: float = 0.1                    # dropout in the transformer (the paper's 0.1)
    attn_drop_rate: float = 0.0             # dropout on attention weights (detr: same as dropout; HF: 0)
    norm_first: bool = False                # False: post-norm (the paper); True: pre-norm (detr's --pre_norm)
    aux_loss: bool = True                   # heads on every decoder layer: `aux` outputs for the auxiliary losses
    decoder_norm_between: bool = False      # True: transformers' DETR with auxiliary_loss (each decoder layer gets
                                            # the previous one's output through the final LayerNorm); detr: False
    pos_temperature: float = 10000.0        # sine position encoding's wavelength base
    backbone: str = "resnet"                # "resnet" (the paper) or "vit" (patch tokens as the feature map)
    backbone_args: dict[str, Any] = field(default_factory=lambda: dict(RESNET50))   # ResNetConfig / ViTConfig fields
    backbone_norm: str = "frozen"           # resnet: "frozen" batch norm (paper, HF) or "batch" (trainable)
    frozen_stages: int = 0                  # resnet: stem + this many stages get no gradient (detr with ImageNet
                                            # weights: 1, which gives the paper's 41.3M trainable parameters)
    mean: tuple[float, float, float] = IMAGENET_MEAN   # input normalisation
    std: tuple[float, float, float] = IMAGENET_STD
    extra: dict[str, Any] = field(default_factory=dict)


class DETR(nn.Module):
    """DETR detector. x (B, 3, H, W) normalised [, mask (B, H, W) bool, True = real pixel] -> dict:

    logits (B, N, num_classes + 1), the last class "no object"; boxes (B, N, 4) normalised (cx, cy, w, h);
    aux: [{"logits", "boxes"}] of decoder layers 1 .. L-1 (empty without aux_loss).
    """

    def __init__(self, cfg: DETRConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        cfg = DETRConfig(**{**asdict(cfg or DETRConfig()), **kwargs})
        if cfg.dim % cfg.num_heads:
            raise VitlabError(f"dim {cfg.dim} is not divisible by num_heads {cfg.num_heads}")
        if cfg.dim % 4:
            raise VitlabError(f"dim must be divisible by 4 (sine positions: sin/cos of y and x), got {cfg.dim}")
        if cfg.num_classes < 1 or cfg.num_queries < 1 or cfg.dec_layers < 1:
            raise VitlabError("num_classes, num_queries and dec_layers must be at least 1")
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.num_queries = cfg.num_queries
        self.backbone = build_backbone(cfg)
        self.input_proj = nn.Conv2d(self.backbone.num_features, cfg.dim, kernel_size=1)
        common = dict(dim=cfg.dim, num_heads=cfg.num_heads, ffn_dim=cfg.ffn_dim, dropout=cfg.dropout,
                      attn_drop=cfg.attn_drop_rate, norm_first=cfg.norm_first)
        self.encoder = TransformerEncoder(cfg.enc_layers, **common)
        self.decoder = TransformerDecoder(cfg.dec_layers, **common, norm_between=cfg.decoder_norm_between)
        self.query_embed = nn.Embedding(cfg.num_queries, cfg.dim)          # the object queries' positions
        self.head = Linear(cfg.dim, cfg.num_classes + 1)                   # classes + "no object"
        self.box_head = BoxMLP(cfg.dim, cfg.dim, 4, num_layers=3)
        self.init_weights()

    def init_weights(self) -> None:
        """detr's: Xavier-uniform transformer matrices, zero attention biases; PyTorch defaults elsewhere."""
        for module in (self.encoder, self.decoder):
            for name, p in module.named_parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
                elif "attn" in name and name.endswith("bias"):
                    nn.init.zeros_(p)

    # --- geometry ------------------------------------------------------------------------------------------------
    def feature_grid(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) of the encoder's token grid for an input of height x width pixels."""
        return self.backbone.feature_grid(height, width)

    # --- forward -------------------------------------------------------------------------------------------------
    def forward(self, x: Tensor, mask: Tensor | None = None) -> dict[str, Any]:
        B = x.shape[0]
        feats = self.input_proj(self.backbone(x))                          # (B, dim, h, w)
        h, w = feats.shape[-2:]
        key_mask = None
        if mask is not None:                                               # padded batches (HF's pixel_mask)
            key_mask = F.interpolate(mask[None].float(), size=(h, w))[0].bool()   # (B, h, w), nearest
        pos = sine_position_2d(h, w, self.cfg.dim, key_mask, self.cfg.pos_temperature, x.device)  # (1|B, hw, dim)
        pos = pos.to(feats.dtype)
        tokens = feats.flatten(2).transpose(1, 2)                          # (B, h*w, dim)
        padding = None if key_mask is None else key_mask.flatten(1)        # (B, h*w), True = real
        memory = self.encoder(tokens, pos, key_padding_mask=padding)       # (B, h*w, dim)
        query_pos = self.query_embed.weight.unsqueeze(0)                   # (1, N, dim)
        target = torch.zeros(B, self.num_queries, self.cfg.dim, device=x.device, dtype=memory.dtype)
        hs = self.decoder(target, memory, query_pos=query_pos, memory_pos=pos, memory_key_padding_mask=padding,
                          return_intermediate=self.cfg.aux_loss)           # (L, B, N, dim) or (B, N, dim)
        logits, boxes = self.head(hs), self.box_head(hs).sigmoid()
        if not self.cfg.aux_loss:
            return {"logits": logits, "boxes": boxes, "aux": []}
        aux = [{"logits": c, "boxes": b} for c, b in zip(logits[:-1], boxes[:-1])]
        return {"logits": logits[-1], "boxes": boxes[-1], "aux": aux}

    # --- checkpoints ---------------------------------------------------------------------------------------------
    def adapt_state_dict(self, state_dict: dict[str, Tensor], **_: Any) -> dict[str, Tensor]:
        """Batch-norm step counters come and go with the backbone norm (frozen has none): drop or add them."""
        own = {k for k in self.state_dict() if k.endswith("num_batches_tracked")}
        out = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked") or k in own}
        for k in own - set(out):
            out[k] = torch.zeros((), dtype=torch.long)
        return out


class BoxMLP(nn.Module):
    """The box head: `num_layers` linear layers with ReLU between. (..., in_dim) -> (..., out_dim)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 3) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


def sine_position_2d(height: int, width: int, dim: int, mask: Tensor | None = None, temperature: float = 10000.0,
                     device: torch.device | str | None = None) -> Tensor:
    """DETR's 2-D sine position encoding, (1, h*w, dim) (or (B, h*w, dim) with a mask (B, h, w), True = real).

    Each axis gets dim/2 channels: the coordinate (1-based, counted over real pixels, normalised to (0, 2 pi])
    divided by temperature^(2 floor(i/2) / (dim/2)), sin on even and cos on odd channels; y's channels first.
    """
    if mask is None:
        y = torch.arange(1, height + 1, dtype=torch.float32, device=device)[None, :, None].expand(1, height, width)
        x = torch.arange(1, width + 1, dtype=torch.float32, device=device)[None, None, :].expand(1, height, width)
    else:
        y, x = mask.float().cumsum(1), mask.float().cumsum(2)              # (B, h, w)
    eps, scale = 1e-6, 2 * math.pi
    y = y / (y[:, -1:, :] + eps) * scale
    x = x / (x[:, :, -1:] + eps) * scale
    half = dim // 2
    freq = temperature ** (2 * (torch.arange(half, device=y.device) // 2) / half)   # (dim/2,)

    def encode(t: Tensor) -> Tensor:
        t = t[..., None] / freq                                            # (b, h, w, dim/2)
        return torch.stack((t[..., 0::2].sin(), t[..., 1::2].cos()), dim=4).flatten(3)  # interleaved sin, cos

    return torch.cat((encode(y), encode(x)), dim=3).flatten(1, 2)          # (b, h*w, dim)


# --- backbones -----------------------------------------------------------------------------------------------------
class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine (buffers, not parameters): y = (x - mean) / sqrt(var + eps) *
    weight + bias, computed as one multiply-add. (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def scale_shift(self) -> tuple[Tensor, Tensor]:
        """(scale, shift), each (C,): y = x * scale + shift."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale, self.bias - self.running_mean * scale

    def forward(self, x: Tensor) -> Tensor:
        scale, shift = self.scale_shift()
        return torch.addcmul(shift.view(1, -1, 1, 1).to(x.dtype), x, scale.view(1, -1, 1, 1).to(x.dtype))


def freeze_batch_norm_(module: nn.Module) -> nn.Module:
    """In place: every nn.BatchNorm2d below `module` becomes a FrozenBatchNorm2d with its current values."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, child.eps)
            if child.weight.device.type != "meta":
                with torch.no_grad():
                    for key in ("weight", "bias", "running_mean", "running_var"):
                        getattr(frozen, key).copy_(getattr(child, key))
            setattr(module, name, frozen.to(child.weight.device))
        else:
            freeze_batch_norm_(child)
    return module


class ResNetBackbone(ResNet):
    """vitlab's ResNet without its classifier: x (B, 3, H, W) -> feature map (B, num_features, h, w).

    Inference (eval mode, no autograd) takes `forward_folded`: the same function with every batch norm folded
    into the convolution before it and the activations channels-last (NHWC), see there. Training runs NHWC too
    on a CPU.
    """

    def forward(self, x: Tensor) -> Tensor:
        if _tracing():
            return self.forward_features(x)
        if self.training or torch.is_grad_enabled():
            # NHWC activations on a CPU: oneDNN convolutions without layout reorders (detr_micro_64 training
            # step at batch 32 here: 1.22x)
            return self.forward_features(x.contiguous(memory_format=torch.channels_last) if x.device.type == "cpu"
                                         else x)
        return self.forward_folded(x)

    def forward_folded(self, x: Tensor) -> Tensor:
        """forward_features for inference: conv + BN as one conv (w * s, b - mean * s with s = gamma /
        sqrt(var + eps); the folded weights are cached while the originals are unchanged), ReLU and the residual
        add in place, NHWC activations (oneDNN then runs the 1x1 convolutions too, which in NCHW fall to
        PyTorch's im2col path, and needs no layout reorders). Equal to forward_features to rounding.
        ResNet-50 backbone at 512 px, batch 8, one thread: 2.4x transformers' (which keeps frozen BN as a multiply
        and an add and runs NCHW). The blocks' own modules are not called, so forward hooks inside the backbone do
        not fire here; weights written through `.data` bypass the version counters the cache checks (drop
        `_fold_cache` after such writes)."""
        x = self._conv_bn(self.conv1, self.bn1, x.contiguous(memory_format=torch.channels_last)).relu_()
        x = self.maxpool(x)
        for stage in self.stages():
            for block in stage:
                x = self._block_folded(block, x)
        return x                                                     # (B, num_features, h, w), NHWC strides

    def _block_folded(self, block: nn.Module, x: Tensor) -> Tensor:
        shortcut = x if block.downsample is None else self._conv_bn(block.downsample[0], block.downsample[1], x)
        y = self._conv_bn(block.conv1, block.bn1, x, relu=True)
        if hasattr(block, "conv3"):                                  # bottleneck
            y = self._conv_bn(block.conv2, block.bn2, y, relu=True)
            return self._conv_bn(block.conv3, block.bn3, y, relu=True, residual=shortcut)
        return self._conv_bn(block.conv2, block.bn2, y, relu=True, residual=shortcut)

    def _conv_bn(self, conv: nn.Conv2d, bn: nn.Module, x: Tensor, relu: bool = False,
                 residual: Tensor | None = None) -> Tensor:
        """relu?(conv(x) with bn folded [+ residual]). On a CPU in fp32, one oneDNN call with the ReLU and the
        sum in its epilogue (PyTorch would send single-threaded 1x1 convolutions to its slower im2col path);
        `residual` is then overwritten with the result."""
        weight, bias = self._folded(conv, bn)
        if _onednn_conv(x):
            args = (weight, bias, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
            if residual is not None:
                return torch.ops.mkldnn._convolution_pointwise_.binary(residual, x, *args, "add", 1.0,
                                                                       "relu" if relu else None, [], None)
            return torch.ops.mkldnn._convolution_pointwise(x, *args, "relu" if relu else "none", [], None)
        y = F.conv2d(x, weight.to(x.dtype), bias.to(x.dtype), conv.stride, conv.padding, conv.dilation, conv.groups)
        if residual is not None:
            y = y.add_(residual)
        return y.relu_() if relu else y

    def _folded(self, conv: nn.Conv2d, bn: nn.Module) -> tuple[Tensor, Tensor]:
        cache = self.__dict__.setdefault("_fold_cache", {})
        # batch norm updates its running statistics inside the kernel without bumping their version counters;
        # num_batches_tracked is incremented by an add_ that does, once per training forward
        tracked = getattr(bn, "num_batches_tracked", None)
        tensors = (conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var) + \
            ((tracked,) if tracked is not None else ())
        key = tuple((t._version, t.data_ptr()) for t in tensors)
        hit = cache.get(id(conv))
        if hit is None or hit[0] != key:
            scale = bn.weight * (bn.running_var + bn.eps).rsqrt()                   # (C_out,)
            weight = (conv.weight * scale.view(-1, 1, 1, 1)).contiguous(memory_format=torch.channels_last)
            hit = (key, weight, bn.bias - bn.running_mean * scale)
            cache[id(conv)] = hit
        return hit[1], hit[2]

    def feature_grid(self, height: int, width: int) -> tuple[int, int]:
        """Every stride-2 layer (7x7 conv, max-pool, each later stage's first block) rounds up: ceil(n / 2)."""
        halvings = (2 if self.cfg.stem == "imagenet" else 0) + self.num_stages - 1
        for _ in range(halvings):
            height, width = (height + 1) // 2, (width + 1) // 2
        return height, width


class ViTBackbone(VisionTransformer):
    """A ViT's patch tokens as a map: x (B, 3, H, W) -> (B, dim, H/p, W/p) (prefix tokens dropped)."""

    @property
    def num_features(self) -> int:
        return self.cfg.dim

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.forward_features(x)[:, self.num_prefix_tokens:]      # (B, h*w, dim)
        h, w = self.grid_size
        return tokens.transpose(1, 2).reshape(x.shape[0], self.cfg.dim, h, w)   # (B, dim, h, w)

    def feature_grid(self, height: int, width: int) -> tuple[int, int]:
        return height // self.cfg.patch_size, width // self.cfg.patch_size


def _onednn_conv(x: Tensor) -> bool:
    """Whether ResNetBackbone's folded path can call oneDNN's fused convolution on `x` (fp32 on a CPU)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
            and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise_"))


def _tracing() -> bool:
    return (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()
            or torch.onnx.is_in_onnx_export())


def build_backbone(cfg: DETRConfig) -> ResNetBackbone | ViTBackbone:
    args = dict(cfg.backbone_args)
    if cfg.backbone == "vit":
        vit = ViTConfig(**{"class_token": False, "pool": "avg", **args, "img_size": cfg.img_size, "num_classes": 0,
                           "in_chans": cfg.in_chans})
        return ViTBackbone(vit)
    if cfg.backbone != "resnet":
        raise VitlabError(f"backbone must be 'resnet' or 'vit', got {cfg.backbone!r}")
    if cfg.backbone_norm not in ("frozen", "batch"):
        raise VitlabError(f"backbone_norm must be 'frozen' or 'batch', got {cfg.backbone_norm!r}")
    net = ResNetBackbone(ResNetConfig(**{**args, "img_size": cfg.img_size, "num_classes": 0,
                                         "in_chans": cfg.in_chans}))
    if cfg.backbone_norm == "frozen":
        freeze_batch_norm_(net)
    if not 0 <= cfg.frozen_stages <= net.num_stages:
        raise VitlabError(f"frozen_stages must be 0..{net.num_stages}, got {cfg.frozen_stages}")
    if cfg.frozen_stages:
        for module in [net.conv1, net.bn1] + net.stages()[:cfg.frozen_stages]:
            module.requires_grad_(False)
    return net


# --- variants ----------------------------------------------------------------------------------------------------
def _detr(overrides: dict[str, Any], **defaults: Any) -> DETR:
    return DETR(DETRConfig(**{**defaults, **overrides}))


@register_model(task="detection")
def detr_resnet50(**kw: Any) -> DETR:
    """The paper's DETR: ResNet-50 (frozen BN), 6 + 6 layers, d 256, 8 heads, FFN 2048, 100 queries, COCO's 91
    classes; 41.5M parameters (41.3M trainable with frozen_stages=1, as detr trains it)."""
    return _detr(kw, backbone_args=dict(RESNET50))


@register_model(task="detection")
def detr_resnet18(**kw: Any) -> DETR:
    """DETR on ResNet-18 (stride 32, 512 channels), otherwise the paper's transformer."""
    return _detr(kw, backbone_args=dict(RESNET18))


# Small-image variants for the 64-px `scenes` data (6 classes, up to 3 objects): a CIFAR-style ResNet (3x3/1 stem,
# no max-pool, four stages of stride 1, 2, 2, 2 -> an 8x8 grid at 64 px), trainable batch norm (from scratch),
# a 3 + 3 layer transformer and 20 queries.
SMALL_64 = dict(img_size=64, num_classes=6, num_queries=20, enc_layers=3, dec_layers=3, backbone_norm="batch")


@register_model(task="detection")
def detr_micro_64(**kw: Any) -> DETR:
    """DETR for 64x64 scenes: ResNet-10 (widths 16-128) under a d 128 / 4 heads / FFN 512 transformer."""
    return _detr(kw, **SMALL_64, dim=128, num_heads=4, ffn_dim=512,
                 backbone_args=dict(block="basic", layers=(1, 1, 1, 1), widths=(16, 32, 64, 128), stem="small",
                                    stem_width=16))


@register_model(task="detection")
def detr_small_64(**kw: Any) -> DETR:
    """DETR for 64x64 scenes, wider: ResNet-10 (widths 32-256) under a d 192 / 6 heads / FFN 768 transformer."""
    return _detr(kw, **SMALL_64, dim=192, num_heads=6, ffn_dim=768,
                 backbone_args=dict(block="basic", layers=(1, 1, 1, 1), widths=(32, 64, 128, 256), stem="small",
                                    stem_width=32))


@register_model(task="detection")
def detr_vit_micro_64(**kw: Any) -> DETR:
    """DETR for 64x64 scenes on a ViT backbone: 8x8 patches of 8 px through a 4-block, d 64 ViT, reshaped to a
    map; a d 128 / 4 heads transformer above it."""
    return _detr(kw, **SMALL_64, dim=128, num_heads=4, ffn_dim=512, backbone="vit",
                 backbone_args=dict(patch_size=8, dim=64, depth=4, num_heads=4))
