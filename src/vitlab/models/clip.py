"""CLIP (Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", ICML 2021).

    I_f = ViT(images)[CLS]                    T_f = TextEncoder(ids)[first end-of-text token]   (causal mask)
    I_e = l2_normalize(I_f W_i)               T_e = l2_normalize(T_f W_t)
    logits = exp(t) * I_e T_e^T               (B_img, B_txt); exp(t) starts at 1/0.07, clamped at 100
    loss = (CE(logits, arange) + CE(logits^T, arange)) / 2          (symmetric InfoNCE, the paper's Figure 3)

The image tower is our ViT with CLIP's two differences: a LayerNorm before the blocks (`ln_pre`; HF
`pre_layrnorm`) and QuickGELU (x * sigmoid(1.702 x)) in the MLPs. The text tower is vitlab.text's TextEncoder,
pre-norm and causal, with learned positions and no embedding scale.

    model = create_model("clip_micro_patch8_64", vocab_size=tok.vocab_size, eos_id=tok.eos_id)
    out = model(images, ids)      # {"logits_per_image", "logits_per_text", "image_embeds", "text_embeds"}
    model.encode_image(images)    # (B, embed_dim), unnormalised (as open_clip)
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..errors import VitlabError
from ..text.modules import TextEncoder, TokenEmbedding
from ..variants import register_model
from .vit import ViTConfig, VisionTransformer

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class QuickGELU(nn.Module):
    """OpenAI CLIP's GELU approximation, x * sigmoid(1.702 x): its weights were trained with it."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, type[nn.Module]] = {"quick_gelu": QuickGELU, "gelu": nn.GELU}


@dataclass
class CLIPConfig:
    img_size: int = 224                     # input side in pixels
    patch_size: int = 32                    # pixels per side of a patch
    in_chans: int = 3
    vision: str = "vit"                     # image tower: "vit" (ours, CLIP's ln_pre) or "resnet" (CLIP's RN50 kind)
    vision_dim: int = 768                   # image tower width (ViT)
    vision_depth: int = 12
    vision_heads: int = 12
    vision_mlp_ratio: float = 4.0
    vision_layers: tuple[int, ...] = (3, 4, 6, 3)   # resnet: bottlenecks per stage (RN50's)
    vision_width: int = 64                  # resnet: stem width, doubled each stage (the pool sees 32x this)
    text_dim: int = 512                     # text tower width
    text_depth: int = 12
    text_heads: int = 8
    text_mlp_ratio: float = 4.0
    vocab_size: int = 49408                 # CLIP's BPE; a word-level vocabulary of a caption set is far smaller
    context_length: int = 77                # text positions
    embed_dim: int = 512                    # the joint image-text space
    eos_id: int = 49407                     # the end-of-text id whose token carries the text's features
    text_pool: str = "eos"                  # "eos": first eos_id; "argmax": the largest id (HF's legacy configs)
    act: str = "quick_gelu"                 # MLP activation of both towers: quick_gelu (OpenAI) or gelu
    norm_eps: float = 1e-5
    logit_scale_init: float = 1 / 0.07      # the paper's initial temperature 0.07
    logit_scale_max: float = 100.0          # exp(t) clamped here "to prevent training instability" (§2.5)
    num_classes: int = 0                    # unused: CLIP has no classifier (the trainer passes the data's count)
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD


@dataclass
class CLIPVisionConfig(ViTConfig):
    pre_norm: bool = True                   # LayerNorm on the embedded tokens before the blocks (CLIP's ln_pre)
    act: str = "quick_gelu"


class CLIPVisionTower(VisionTransformer):
    """Our ViT with CLIP's ln_pre and MLP activation; no head. x (B, 3, H, W) -> pooled [CLS] (B, dim) via
    forward_head(forward_features(x), pre_logits=True)."""

    config_class = CLIPVisionConfig

    def __init__(self, cfg: CLIPVisionConfig | None = None, **kwargs: Any) -> None:
        super().__init__(cfg, **kwargs)
        self.norm_pre = nn.LayerNorm(self.cfg.dim, eps=self.cfg.norm_eps) if self.cfg.pre_norm else nn.Identity()

    def make_block(self, index: int, drop_path: float) -> nn.Module:
        block = super().make_block(index, drop_path)
        block.mlp.act = ACTIVATIONS[self.cfg.act]()
        return block

    def embed(self, x: Tensor) -> Tensor:
        return self.norm_pre(super().embed(x))


class CLIP(nn.Module):
    """Contrastive image-text model. images (B_i, 3, H, W) normalised, input_ids (B_t, L) long (bos ... eos,
    right-padded) -> dict: logits_per_image (B_i, B_t), logits_per_text (B_t, B_i), image_embeds (B_i, E) and
    text_embeds (B_t, E), both L2-normalised."""

    def __init__(self, cfg: CLIPConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        cfg = CLIPConfig(**{**asdict(cfg or CLIPConfig()), **kwargs})
        if cfg.act not in ACTIVATIONS:
            raise VitlabError(f"act must be one of {', '.join(ACTIVATIONS)}, got {cfg.act!r}")
        if cfg.text_pool not in ("eos", "argmax"):
            raise VitlabError(f"text_pool must be 'eos' or 'argmax', got {cfg.text_pool!r}")
        if not 0 <= cfg.eos_id < cfg.vocab_size:
            raise VitlabError(f"eos_id {cfg.eos_id} is outside the vocabulary of {cfg.vocab_size}")
        if cfg.vision not in ("vit", "resnet"):
            raise VitlabError(f"vision must be 'vit' or 'resnet', got {cfg.vision!r}")
        cfg.vision_layers = tuple(cfg.vision_layers)
        self.cfg = cfg
        self.visual: nn.Module
        if cfg.vision == "resnet":           # OpenAI RN: the attention pool projects to the joint space itself
            from .clip_resnet import CLIPResNet

            self.visual = CLIPResNet(cfg.vision_layers, cfg.vision_width, cfg.vision_heads, cfg.embed_dim,
                                     img_size=cfg.img_size, in_chans=cfg.in_chans)
        else:
            self.visual = CLIPVisionTower(img_size=cfg.img_size, patch_size=cfg.patch_size, in_chans=cfg.in_chans,
                                          num_classes=0, dim=cfg.vision_dim, depth=cfg.vision_depth,
                                          num_heads=cfg.vision_heads, mlp_ratio=cfg.vision_mlp_ratio,
                                          norm_eps=cfg.norm_eps, act=cfg.act, mean=cfg.mean, std=cfg.std)
        embed = TokenEmbedding(cfg.vocab_size, cfg.text_dim, cfg.context_length, positions="learned", dropout=0.0,
                               scale=False)
        self.text = TextEncoder(embed, cfg.text_depth, cfg.text_dim, cfg.text_heads,
                                int(cfg.text_dim * cfg.text_mlp_ratio), dropout=0.0, norm_first=True, causal=True,
                                act_layer=ACTIVATIONS[cfg.act])
        self.visual_projection: nn.Module = (nn.Identity() if cfg.vision == "resnet"
                                             else nn.Linear(cfg.vision_dim, cfg.embed_dim, bias=False))
        self.text_projection = nn.Linear(cfg.text_dim, cfg.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(cfg.logit_scale_init)))
        self.num_classes = 0
        self._init_text()

    def _init_text(self) -> None:
        """OpenAI's initialisation of the text side: token embedding N(0, 0.02), positions N(0, 0.01),
        projections N(0, width^-0.5)."""
        nn.init.normal_(self.text.embed.tok.weight, std=0.02)
        nn.init.normal_(self.text.embed.pos, std=0.01)
        nn.init.normal_(self.text_projection.weight, std=self.cfg.text_dim ** -0.5)
        if isinstance(self.visual_projection, nn.Linear):
            nn.init.normal_(self.visual_projection.weight, std=self.cfg.vision_dim ** -0.5)

    def no_weight_decay(self) -> set[str]:
        return {"logit_scale", "visual.cls_token", "visual.pos_embed", "visual.attnpool.positional_embedding",
                "text.embed.pos"}

    def adapt_state_dict(self, state_dict: dict[str, Tensor], mode: str = "bicubic",
                         antialias: bool = False) -> dict[str, Tensor]:
        """Another input size: the image tower's position embedding resampled to our grid."""
        visual = {k[len("visual."):]: v for k, v in state_dict.items() if k.startswith("visual.")}
        visual = self.visual.adapt_state_dict(visual, mode=mode, antialias=antialias)
        return {**{k: v for k, v in state_dict.items() if not k.startswith("visual.")},
                **{"visual." + k: v for k, v in visual.items()}}

    # --- the two towers --------------------------------------------------------------------------------------------
    def encode_image(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) normalised -> (B, embed_dim), unnormalised."""
        pooled = self.visual.forward_head(self.visual.forward_features(images), pre_logits=True)   # (B, vision_dim)
        return self.visual_projection(pooled)

    def image_patch_embeds(self, images: Tensor) -> Tensor:
        """Each patch token through the final norm and the projection: (B, N, embed_dim) (a text-conditioned map
        compares them with a prompt's embedding). A ResNet tower: each grid position through the attention
        pool's value and output projections, (B, h*w, embed_dim)."""
        if self.cfg.vision == "resnet":
            return self.visual.attnpool.dense(self.visual.forward_features(images))
        tokens = self.visual.forward_features(images)[:, self.visual.num_prefix_tokens:]   # (B, N, vision_dim)
        return self.visual_projection(tokens)

    def patch_grid(self) -> tuple[int, int]:
        """(gh, gw) of image_patch_embeds' N = gh * gw positions: the ViT's patch grid, or the ResNet tower's last
        feature map (the size its attention pool is built for)."""
        if self.cfg.vision == "resnet":
            return (int(self.visual.grid), int(self.visual.grid))
        return tuple(int(g) for g in self.visual.patch_embed.grid_size)

    def text_positions(self, input_ids: Tensor) -> Tensor:
        """(B, L) -> (B,) index of the token that carries each text's features."""
        if self.cfg.text_pool == "argmax":
            return input_ids.argmax(dim=-1)
        is_eos = input_ids == self.cfg.eos_id                                # (B, L)
        if not bool(is_eos.any(dim=-1).all()):
            raise VitlabError(f"a text has no end-of-text token (id {self.cfg.eos_id}): encode with eos")
        return is_eos.int().argmax(dim=-1)                                   # first eos of each row

    def encode_text(self, input_ids: Tensor) -> Tensor:
        """(B, L) long -> (B, embed_dim), unnormalised: the causal encoder's output at the end-of-text token."""
        B, L = input_ids.shape                                               # texts, tokens
        if L > self.cfg.context_length:
            raise VitlabError(f"{L} tokens exceed the context length {self.cfg.context_length}")
        x = self.text(input_ids)                                             # (B, L, text_dim), final LN applied
        pooled = x[torch.arange(B, device=x.device), self.text_positions(input_ids)]   # (B, text_dim)
        return self.text_projection(pooled)

    def scale(self) -> Tensor:
        return self.logit_scale.exp().clamp(max=self.cfg.logit_scale_max)

    def forward(self, images: Tensor, input_ids: Tensor | None = None) -> dict[str, Tensor]:
        """Without input_ids: {"image_embeds"} only (the image tower alone, as `vitlab info` counts it)."""
        image_embeds = F.normalize(self.encode_image(images), dim=-1)       # (B_i, E)
        if input_ids is None:
            return {"image_embeds": image_embeds}
        text_embeds = F.normalize(self.encode_text(input_ids), dim=-1)      # (B_t, E)
        logits_per_image = self.scale() * image_embeds @ text_embeds.t()    # (B_i, B_t)
        return {"logits_per_image": logits_per_image, "logits_per_text": logits_per_image.t(),
                "image_embeds": image_embeds, "text_embeds": text_embeds}


def clip_loss(logits_per_image: Tensor, positives: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE: the mean of image->text and text->image cross-entropy over the batch.

    logits_per_image (B, B), pair i is the match. `positives` (B, B) bool marks further matches (identical
    captions in one batch): each row's target is then uniform over its positives instead of one-hot.
    """
    B = logits_per_image.shape[0]
    if positives is None:
        target = torch.arange(B, device=logits_per_image.device)
        return (F.cross_entropy(logits_per_image, target) + F.cross_entropy(logits_per_image.t(), target)) / 2
    soft = positives.float()
    i2t = F.cross_entropy(logits_per_image, soft / soft.sum(1, keepdim=True))
    t2i = F.cross_entropy(logits_per_image.t(), soft.t() / soft.t().sum(1, keepdim=True))
    return (i2t + t2i) / 2


# --- variants ---------------------------------------------------------------------------------------------------
@register_model(task="contrastive")
def clip_micro_patch8_64(**kw: Any) -> CLIP:
    """A CLIP a laptop trains on `scenes` in minutes: ViT 4x128 at 64 px (8 px patches), text 3x128, joint 128."""
    return CLIP(CLIPConfig(img_size=64, patch_size=8, vision_dim=128, vision_depth=4, vision_heads=4, text_dim=128,
                           text_depth=3, text_heads=4, embed_dim=128, vocab_size=512, context_length=40, eos_id=2,
                           act="gelu"), **kw)


@register_model(task="contrastive")
def clip_micro_patch16_64(**kw: Any) -> CLIP:
    """clip_micro_patch8_64 with 16 px patches: 16 image tokens instead of 64, for a CPU shared with others."""
    return clip_micro_patch8_64(patch_size=16, **kw)


@register_model(task="contrastive")
def clip_tiny_patch16_224(**kw: Any) -> CLIP:
    """ViT-Ti/16 image tower (192 wide, 12 deep), a 6-layer 256-wide text tower, joint space 256."""
    return CLIP(CLIPConfig(img_size=224, patch_size=16, vision_dim=192, vision_depth=12, vision_heads=3,
                           text_dim=256, text_depth=6, text_heads=4, embed_dim=256), **kw)


@register_model(task="contrastive")
def clip_vit_base_patch32_224(**kw: Any) -> CLIP:
    """OpenAI's ViT-B/32: image 12x768 at 32 px patches, text 12x512, joint 512 (HF openai/clip-vit-base-patch32)."""
    return CLIP(CLIPConfig(), **kw)


@register_model(task="contrastive")
def clip_vit_base_patch16_224(**kw: Any) -> CLIP:
    """OpenAI's ViT-B/16."""
    return CLIP(CLIPConfig(patch_size=16), **kw)


@register_model(task="contrastive")
def clip_resnet_micro_64(**kw: Any) -> CLIP:
    """CLIP's modified ResNet at laptop size for `scenes` at 64 px: 3-conv stem (width 16) + avg pool, three
    anti-aliased bottleneck stages (one block each, 4x4 last map of 256 channels), attention pooling (4 heads);
    text 3x128, joint 128."""
    return clip_micro_patch8_64(**{"vision": "resnet", "vision_layers": (1, 1, 1), "vision_width": 16,
                                   "vision_heads": 4, **kw})


@register_model(task="contrastive")
def clip_rn50_224(**kw: Any) -> CLIP:
    """OpenAI's RN50: modified ResNet-50 (3, 4, 6, 3) of width 64, 32-head attention pooling to a 1024-d joint
    space; text 12x512 (8 heads)."""
    return CLIP(CLIPConfig(vision="resnet", vision_layers=(3, 4, 6, 3), vision_width=64, vision_heads=32,
                           embed_dim=1024), **kw)
