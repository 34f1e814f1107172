"""DINO (Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021).

Self-distillation with no labels: a student network g_s is trained to match a teacher g_t, on other views of the
same image; the teacher is an exponential moving average of the student (Alg. 1):

    P_t(x) = softmax((g_t(x) - c) / tau_t)          teacher: centred, sharpened (tau_t 0.04 -> 0.07)
    P_s(x) = softmax(g_s(x) / tau_s)                student: tau_s = 0.1
    loss   = mean over pairs (x in 2 global views, x' in all views, x' != x) of  -P_t(x) . log P_s(x')
    theta_t <- m theta_t + (1 - m) theta_s          m: cosine schedule 0.996 -> 1 over training
    c <- 0.9 c + 0.1 mean_batch g_t(x)              centering (with sharpening, what keeps the output from collapsing)

g = head(backbone(x)[CLS]); the head is a 3-layer MLP (hidden 2048, bottleneck 256, GELU), an l2 normalisation and
a weight-normalised linear layer onto K prototypes, frozen for the first epoch (§ Appendix, "last layer").

`DINO` holds both networks, the center and the step counter the schedules read, so a checkpoint (its state dict)
holds everything a resume needs. Parameter names follow facebookresearch/dino's MultiCropWrapper: `student.backbone.*`
(a timm-layout ViT), `student.head.mlp.{0,2,4}.*`, `student.head.last_layer.weight_g/weight_v`, `teacher.*` alike.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import VitlabError
from ..layers import resample_pos_embed
from ..variants import build_model, register_model


@dataclass
class DINOConfig:
    backbone: str = "vit_micro_patch8_64"   # any registered ViT/DeiT classifier (built with num_classes=0)
    img_size: int = 64                       # global crop side (the backbone's input size)
    local_size: int = 32                     # local crop side (224 -> 96 in the paper: ~0.43 of the global side)
    num_local_crops: int = 4                 # N local crops per image (the paper: 6 or 10)
    out_dim: int = 1024                      # K prototypes (65536 for ImageNet; K scales with the data)
    hidden_dim: int = 2048                   # head MLP width
    bottleneck_dim: int = 256                # head output before the prototypes
    norm_last_layer: bool = True             # weight_g fixed at 1: prototypes of unit norm (more stable)
    student_temp: float = 0.1                # tau_s
    teacher_temp: float = 0.07               # tau_t after warm-up
    warmup_teacher_temp: float = 0.04        # tau_t at the start
    warmup_teacher_temp_fraction: float = 0.3   # share of the epochs tau_t warms up over (30 of 100 in the paper)
    momentum_teacher: float = 0.996          # m at step 0; cosine to 1 at the last step
    weight_decay_end: float = 0.4            # the student's weight decay: cosine from --weight-decay to this (the
                                             # paper's 0.04 -> 0.4); set it to --weight-decay for a constant decay
    center_momentum: float = 0.9             # center EMA
    freeze_last_layer_epochs: int = 1        # epochs the prototypes stay frozen
    global_crops_scale: tuple[float, float] = (0.4, 1.0)    # area fraction of a global crop (the paper's)
    local_crops_scale: tuple[float, float] = (0.05, 0.4)    # area fraction of a local crop (the paper's)
    drop_path_rate: float = 0.1              # stochastic depth of the student (the teacher has none)
    hue_jitter: float = 0.1                  # colour jitter's hue range (the paper's 0.1; 0.5 = any hue, for data
                                             # whose colours are a nuisance to the labels, like `scenes`' shapes)
    grayscale_p: float = 0.2                 # probability of a grayscale view (the paper's 0.2)
    colour_jitter: tuple[float, float, float] = (0.4, 0.4, 0.2)   # brightness, contrast, saturation (the paper's;
                                             # SimCLR's strong jitter is 0.8, 0.8, 0.8)
    colour_jitter_p: float = 0.8             # probability of the colour jitter (the paper's 0.8)
    head_bn: bool = False                    # BatchNorm after the head's two hidden layers (the official
                                             # --use_bn_in_head; off for ViTs in the paper)
    backbone_weight_init: str = ""           # the backbone's ViTConfig.weight_init ("" or "jax"); the head keeps
                                             # the paper's truncated normal 0.02 whatever this is
    num_classes: int = 0                     # labels of the data it was trained on (informative; no classifier)
    mean: tuple[float, ...] | None = None    # input normalisation; None: the backbone's
    std: tuple[float, ...] | None = None


def check_colour_jitter(hue: float, grayscale_p: float, jitter: tuple[float, ...], jitter_p: float) -> None:
    """Refuse a hue range outside [0, 0.5], a grayscale or jitter probability outside [0, 1], or a colour jitter
    that is not three strengths (brightness, contrast, saturation) in [0, 1] (one-line VitlabErrors)."""
    if not 0.0 <= hue <= 0.5:
        raise VitlabError(f"hue_jitter must be in [0, 0.5] (a fraction of the colour wheel), got {hue}")
    if not 0.0 <= grayscale_p <= 1.0:
        raise VitlabError(f"grayscale_p must be a probability in [0, 1], got {grayscale_p}")
    if not 0.0 <= jitter_p <= 1.0:
        raise VitlabError(f"colour_jitter_p must be a probability in [0, 1], got {jitter_p}")
    if (not isinstance(jitter, (list, tuple)) or len(jitter) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0 for v in jitter)):
        raise VitlabError(f"colour_jitter must be three strengths in [0, 1] (brightness, contrast, saturation), "
                          f"got {jitter!r}")


def check_config(cfg: DINOConfig) -> None:
    """Every DINOConfig field that a value can make meaningless, refused when the model is built (before any
    training or writing) with one line naming the field."""
    def need(ok: bool, field: str, rule: str) -> None:
        if not ok:
            raise VitlabError(f"DINO {field} must be {rule}, got {getattr(cfg, field)!r}")

    for field in ("img_size", "local_size", "out_dim", "hidden_dim", "bottleneck_dim"):
        value = getattr(cfg, field)
        need(isinstance(value, int) and not isinstance(value, bool) and value >= 1, field, "a positive integer")
    for field in ("num_local_crops", "freeze_last_layer_epochs"):
        value = getattr(cfg, field)
        need(isinstance(value, int) and not isinstance(value, bool) and value >= 0, field, "an integer >= 0")
    for field in ("student_temp", "teacher_temp", "warmup_teacher_temp"):
        need(getattr(cfg, field) > 0, field, "> 0")
    need(0.0 <= cfg.momentum_teacher <= 1.0, "momentum_teacher", "in [0, 1]")
    need(0.0 <= cfg.center_momentum < 1.0, "center_momentum", "in [0, 1)")
    need(0.0 <= cfg.warmup_teacher_temp_fraction <= 1.0, "warmup_teacher_temp_fraction", "in [0, 1]")
    need(cfg.weight_decay_end >= 0.0, "weight_decay_end", ">= 0")
    need(0.0 <= cfg.drop_path_rate < 1.0, "drop_path_rate", "in [0, 1)")
    for field in ("global_crops_scale", "local_crops_scale"):
        scale = getattr(cfg, field)
        need(len(scale) == 2 and 0.0 < scale[0] <= scale[1] <= 1.0, field,
             "two area fractions 0 < low <= high <= 1")
    check_colour_jitter(cfg.hue_jitter, cfg.grayscale_p, cfg.colour_jitter, cfg.colour_jitter_p)


class WeightNormLinear(nn.Module):
    """Linear without bias, weight = g * v / ||v|| per output row (torch's weight_norm, dim 0), with the parameter
    names the official checkpoints use. x (..., in) -> (..., out)."""

    def __init__(self, in_dim: int, out_dim: int, norm_fixed: bool = True) -> None:
        super().__init__()
        self.weight_v = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.trunc_normal_(self.weight_v, std=0.02)
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=not norm_fixed)

    def weight(self, frozen: bool = False) -> Tensor:
        g, v = (self.weight_g.detach(), self.weight_v.detach()) if frozen else (self.weight_g, self.weight_v)
        return g * v / v.norm(dim=1, keepdim=True)                 # (out, in)

    def forward(self, x: Tensor, frozen: bool = False) -> Tensor:
        return F.linear(x, self.weight(frozen))


class DINOHead(nn.Module):
    """features (B, in) -> prototype scores (B, K): MLP -> l2-normalise -> weight-normalised linear. With `bn`
    a BatchNorm follows each hidden linear (the official use_bn_in_head layout: mlp.{0,3,6} linears, mlp.{1,4}
    norms)."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 norm_last_layer: bool = True, bn: bool = False) -> None:
        super().__init__()
        def hidden(i: int, o: int) -> list[nn.Module]:
            return [nn.Linear(i, o)] + ([nn.BatchNorm1d(o)] if bn else []) + [nn.GELU()]
        self.mlp = nn.Sequential(*hidden(in_dim, hidden_dim), *hidden(hidden_dim, hidden_dim),
                                 nn.Linear(hidden_dim, bottleneck_dim))
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, norm_fixed=norm_last_layer)

    def forward(self, x: Tensor, freeze_last_layer: bool = False) -> Tensor:
        x = F.normalize(self.mlp(x), dim=-1, p=2)                  # (B, bottleneck) on the unit sphere
        # a frozen last layer gets no gradient (the official code drops its .grad during the first epoch)
        return self.last_layer(x, frozen=freeze_last_layer)


class MultiCropNet(nn.Module):
    """backbone + head, applied to crops of any size the patches divide (the position embedding is resampled
    for a crop smaller than the backbone's input, as the official interpolate_pos_encoding does)."""

    def __init__(self, backbone: nn.Module, head: DINOHead) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def tokens(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> tokens (B, prefix + H/p * W/p, dim) after the final norm."""
        return backbone_tokens(self.backbone, x)

    def cls(self, x: Tensor) -> Tensor:
        return self.tokens(x)[:, 0]                                  # (B, dim) the [CLS] token

    def forward(self, crops: list[Tensor], freeze_last_layer: bool = False) -> Tensor:
        """Crops grouped by size, each (B_i, 3, S_i, S_i) -> head outputs (sum B_i, K) in the same order."""
        feats = [self.cls(x) for x in crops]
        return self.head(torch.cat(feats), freeze_last_layer=freeze_last_layer)


def backbone_tokens(backbone: nn.Module, x: Tensor) -> Tensor:
    """A vitlab ViT/DeiT (or hybrid ViT, the CNN's stride as its patch) on an input of any size its patches
    divide: (B, 3, H, W) -> (B, prefix + N, dim)."""
    B, _, H, W = x.shape                                             # batch, channels, height, width
    p = backbone.patch_embed.patch_size
    if H % p[0] or W % p[1]:
        raise VitlabError(f"crop {H}x{W} is not divisible by the patch size {p[0]}")
    embed = backbone.patch_embed
    if hasattr(embed, "backbone"):                                   # hybrid ViT: its CNN's map is the image
        x = embed.backbone.forward_features(x)                       # (B, C, H/p, W/p)
    t = embed.proj(x).flatten(2).transpose(1, 2)                     # (B, N, dim)
    t = torch.cat(backbone.prefix_tokens(B) + [t], dim=1)            # (B, prefix + N, dim)
    if backbone.pos_embed is not None:
        pe = resample_pos_embed(backbone.pos_embed, (H // p[0], W // p[1]), tuple(backbone.grid_size),
                                backbone.num_prefix_tokens, mode="bicubic")
        t = t + pe.to(t.dtype)
    return backbone.norm(backbone.blocks(backbone.pos_drop(t)))


class DINO(nn.Module):
    """Student and teacher networks with the center and the training clock.

    forward(global_crops (2B, 3, S, S), local_crops (nB, 3, L, L) or None) ->
        {"student": (2B + nB, K) scores of every crop, "teacher": (2B, K) scores of the global crops (no grad)}
    forward_features(x) -> the teacher backbone's tokens (B, prefix + N, dim) (what evaluation uses, as the paper);
    forward_head(tokens, pre_logits=True) -> the [CLS] feature (B, dim).
    """

    def __init__(self, cfg: DINOConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        cfg = DINOConfig(**{**asdict(cfg or DINOConfig()), **kwargs})
        cfg.global_crops_scale, cfg.local_crops_scale = tuple(cfg.global_crops_scale), tuple(cfg.local_crops_scale)
        cfg.colour_jitter = tuple(cfg.colour_jitter) if isinstance(cfg.colour_jitter, list) else cfg.colour_jitter
        check_config(cfg)
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        init = {"weight_init": cfg.backbone_weight_init} if cfg.backbone_weight_init else {}
        student_backbone = build_model(cfg.backbone, num_classes=0, img_size=cfg.img_size,
                                       drop_path_rate=cfg.drop_path_rate, **init)
        if not hasattr(student_backbone, "patch_embed") or getattr(student_backbone, "cls_token", None) is None:
            raise VitlabError(f"DINO backbone {cfg.backbone} must be a ViT/DeiT with a [CLS] token")
        dim = student_backbone.dim
        cfg.mean = tuple(cfg.mean or student_backbone.cfg.mean)
        cfg.std = tuple(cfg.std or student_backbone.cfg.std)
        self.student = MultiCropNet(student_backbone, DINOHead(dim, cfg.out_dim, cfg.hidden_dim, cfg.bottleneck_dim,
                                                               cfg.norm_last_layer, cfg.head_bn))
        teacher_backbone = build_model(cfg.backbone, num_classes=0, img_size=cfg.img_size, drop_path_rate=0.0,
                                       **init)
        self.teacher = MultiCropNet(teacher_backbone, DINOHead(dim, cfg.out_dim, cfg.hidden_dim,
                                                               cfg.bottleneck_dim, cfg.norm_last_layer, cfg.head_bn))
        self.teacher.load_state_dict(self.student.state_dict())      # the teacher starts as the student
        self.teacher.requires_grad_(False)
        self.register_buffer("center", torch.zeros(1, cfg.out_dim))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))          # optimizer steps done
        self.register_buffer("teacher_temp", torch.tensor(cfg.warmup_teacher_temp))  # tau_t of the last step
        self.dim = dim

    @property
    def backbone(self) -> nn.Module:
        """The network evaluated and explained: the teacher's backbone (the paper evaluates the teacher)."""
        return self.teacher.backbone

    def forward(self, global_crops: Tensor, local_crops: Tensor | None = None, *,
                freeze_last_layer: bool = False) -> dict[str, Tensor]:
        crops = [global_crops] + ([local_crops] if local_crops is not None and len(local_crops) else [])
        student = self.student(crops, freeze_last_layer=freeze_last_layer)      # (2B + nB, K)
        with torch.no_grad():
            teacher = self.teacher([global_crops])                               # (2B, K)
        return {"student": student, "teacher": teacher}

    def forward_features(self, x: Tensor) -> Tensor:
        return self.teacher.tokens(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return x[:, 0] if pre_logits else self.teacher.head(x[:, 0])

    def teacher_probs(self, x: Tensor) -> Tensor:
        """The teacher's centred, sharpened output distribution (B, K) for normalised images x."""
        return F.softmax((self.teacher([x]) - self.center) / self.teacher_temp, dim=-1)

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """theta_t <- m theta_t + (1 - m) theta_s, parameters of backbone and head."""
        t = list(self.teacher.parameters())
        s = [p.detach() for p in self.student.parameters()]
        torch._foreach_lerp_(t, s, 1.0 - momentum)

    @torch.no_grad()
    def update_center(self, teacher_out: Tensor) -> None:
        """c <- m c + (1 - m) mean over the batch (and over ranks) of the teacher's raw scores (2B, K)."""
        batch_center = teacher_out.float().sum(dim=0, keepdim=True)
        count = torch.tensor(float(teacher_out.shape[0]), device=teacher_out.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(batch_center)
            torch.distributed.all_reduce(count)
        m = self.cfg.center_momentum
        self.center.mul_(m).add_(batch_center / count, alpha=1 - m)

    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "pos_embed", "dist_token"}

    def adapt_state_dict(self, state_dict: dict[str, Tensor], mode: str = "bicubic",
                         antialias: bool = False) -> dict[str, Tensor]:
        """Position embeddings resampled to this input size; a backbone-only checkpoint (the official
        `*_pretrain.pth`, read by vitlab.convert.dino) keeps this model's fresh heads, center and clock."""
        sd = dict(state_dict)
        sd.pop("_grid_size", None)
        own = self.state_dict()
        for key in [k for k in sd if k.endswith("backbone.pos_embed")]:
            if key in own and sd[key].shape != own[key].shape:
                net = self.student if key.startswith("student") else self.teacher
                sd[key] = resample_pos_embed(sd[key], tuple(net.backbone.grid_size), None,
                                             net.backbone.num_prefix_tokens, mode=mode, antialias=antialias)
        if "_backbone_only" in sd:
            del sd["_backbone_only"]
            for key, value in own.items():
                if ".head." in key or key in ("center", "step", "teacher_temp"):
                    sd.setdefault(key, value)
        return sd


# --- the schedules -------------------------------------------------------------------------------------------------
def cosine_schedule(step: int, total_steps: int, base: float, final: float) -> float:
    """The official cosine_scheduler without warm-up: base at step 0, final at total_steps (and after)."""
    return final + 0.5 * (base - final) * (1 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))


def teacher_momentum(step: int, total_steps: int, base: float = 0.996, final: float = 1.0) -> float:
    """Cosine schedule of the teacher's EMA momentum: base at step 0, final at total_steps."""
    return cosine_schedule(step, total_steps, base, final)


def weight_decay(step: int, total_steps: int, base: float = 0.04, final: float = 0.4) -> float:
    """Cosine schedule of the student's weight decay (the paper's 0.04 -> 0.4): base at step 0, final at the end."""
    return cosine_schedule(step, total_steps, base, final)


def teacher_temperature(epoch: int, epochs: int, start: float = 0.04, end: float = 0.07,
                        warmup_fraction: float = 0.3) -> float:
    """tau_t of a 0-based epoch: linear from start to end over the warm-up epochs, then end (the official
    np.linspace(start, end, warmup_epochs) per epoch)."""
    warmup = max(1, round(warmup_fraction * epochs)) if warmup_fraction > 0 else 0
    if epoch >= warmup:
        return end
    return start + (end - start) * epoch / max(warmup - 1, 1) if warmup > 1 else start


def dino_loss(student_out: Tensor, teacher_out: Tensor, center: Tensor, teacher_temp: float,
              student_temp: float = 0.1, num_global: int = 2) -> Tensor:
    """The cross-entropy between the teacher's distribution of each global view and the student's of every
    other view, averaged over the pairs.

    student_out (V * B, K) for V views (the num_global global ones first), teacher_out (num_global * B, K),
    view-major: rows [v * B, (v + 1) * B) are view v of the B images.
    """
    V = student_out.shape[0] // (teacher_out.shape[0] // num_global)
    log_p_s = F.log_softmax(student_out.float() / student_temp, dim=-1).chunk(V)           # V x (B, K)
    p_t = F.softmax((teacher_out.float() - center) / teacher_temp, dim=-1).detach().chunk(num_global)
    total, pairs = student_out.new_zeros((), dtype=torch.float32), 0
    for t, q in enumerate(p_t):
        for v, log_p in enumerate(log_p_s):
            if v == t:                                               # the same view: no pair
                continue
            total = total + (-q * log_p).sum(dim=-1).mean()
            pairs += 1
    return total / pairs


# --- variants ------------------------------------------------------------------------------------------------------
def _dino(backbone: str, img_size: int, kw: dict[str, Any], **defaults: Any) -> DINO:
    return DINO(DINOConfig(**{"backbone": backbone, "img_size": img_size, **defaults, **kw}))


# Small-image variants for the 64-px `scenes` (and 32-px) data: K = 1024 prototypes, a narrower head, and the two
# settings that stopped the collapse on a CPU budget (README, DINO rounds 2-4): a constant teacher temperature of
# 0.02 (the paper's 0.04 -> 0.07 collapsed to the uniform output within the first epochs of every 300-1000-step
# run) and the original ViT's xavier init of the backbone. The released variants below keep the paper's recipe.
SMALL_DATA = dict(teacher_temp=0.02, warmup_teacher_temp=0.02, backbone_weight_init="jax")


@register_model(task="self_supervised")
def dino_vit_micro_patch8_64(**kw: Any) -> DINO:
    """DINO on ViT-Micro/8 at 64x64 (8x8 patches; local crops 32 px)."""
    return _dino("vit_micro_patch8_64", 64, kw, hidden_dim=512, **SMALL_DATA)


@register_model(task="self_supervised")
def dino_vit_micro_patch4_64(**kw: Any) -> DINO:
    """DINO on ViT-Micro/4 at 64x64 (16x16 patches: finer attention maps, ~4x the compute of /8)."""
    return _dino("vit_micro_patch4_32", 64, kw, hidden_dim=512, local_size=28, **SMALL_DATA)


@register_model(task="self_supervised")
def dino_vit_micro_patch4_32(**kw: Any) -> DINO:
    """DINO on ViT-Micro/4 at 32x32 (local crops 16 px)."""
    return _dino("vit_micro_patch4_32", 32, kw, hidden_dim=512, local_size=16, **SMALL_DATA)


@register_model(task="self_supervised")
def dino_vit_micro_r6_s8_64(**kw: Any) -> DINO:
    """DINO on the hybrid ViT-micro over a 5-conv ResNet stem (stride 8: 8x8 tokens at 64x64; local crops 32 px)."""
    return _dino("vit_micro_r6_s8_64", 64, kw, hidden_dim=512, **SMALL_DATA)


@register_model(task="self_supervised")
def dino_vit_tiny_patch8_64(**kw: Any) -> DINO:
    """DINO on ViT-Tiny/8 at 64x64."""
    return _dino("vit_tiny_patch8_64", 64, kw, hidden_dim=1024, **SMALL_DATA)


# The released DINO models (facebookresearch/dino): K = 65536, head 2048 / 256, local crops 96 px.
RELEASED = dict(out_dim=65536, local_size=96, num_local_crops=10)


@register_model(task="self_supervised")
def dino_vit_small_patch16_224(**kw: Any) -> DINO:
    """DINO ViT-S/16 (the `dino_deitsmall16` release)."""
    return _dino("vit_small_patch16_224", 224, kw, **RELEASED)


@register_model(task="self_supervised")
def dino_vit_small_patch8_224(**kw: Any) -> DINO:
    """DINO ViT-S/8 (the `dino_deitsmall8` release)."""
    return _dino("vit_small_patch8_224", 224, kw, **RELEASED)


@register_model(task="self_supervised")
def dino_vit_base_patch16_224(**kw: Any) -> DINO:
    """DINO ViT-B/16 (the `dino_vitbase16` release)."""
    return _dino("vit_base_patch16_224", 224, kw, **RELEASED)


@register_model(task="self_supervised")
def dino_vit_base_patch8_224(**kw: Any) -> DINO:
    """DINO ViT-B/8 (the `dino_vitbase8` release)."""
    return _dino("vit_base_patch8_224", 224, kw, **RELEASED)
