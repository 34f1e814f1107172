"""Text-video retrieval with the multi-modal transformer (Gabeur et al., "Multi-modal Transformer for Video
Retrieval", ECCV 2020), and its COLL-style max-pool baseline.

    F_t  = frame_encoder(frame t)                         (B, T, F)   any registered image model, pooled features
    COLL:    v = GEU(max_t F_t)                           max-pool over time, a gated embedding unit (Miech et al.)
    MMT:     tokens = [AGG_m, F_1, ..., F_T] W_m + E_m + T_(agg, 1..T)     per modality m (here one: "rgb")
             v = GEU(MMT(tokens)[AGG_m])                  the aggregated output; AGG_m starts as max_t F_t (§3.1)
    MMT max-pool input: tokens = [AGG_m] only             the transformer sees the max-pooled feature, no order
    text:    h = GEU(mean over words of TextEncoder(ids))  (vitlab.text's encoder, bidirectional)
    s(v, h) = cos(v, h);  loss = bidirectional max-margin ranking (§3.3), or InfoNCE

Modality embeddings E_m and per-modality [AGG] tokens are kept even with one modality, so another expert (audio,
motion) is one more entry of `modalities` and one more feature stream. With several modalities the paper weights
each modality's similarity by a text-predicted mixture; with one, the weight is 1 and s is one cosine.

    model = create_model("mmt_micro_32", vocab_size=tok.vocab_size)
    out = model(frames, ids, mask)     # {"similarity" (B_v, B_t), "video_embeds", "text_embeds"}
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..errors import VitlabError
from ..layers.transformer import TransformerEncoder
from ..text.modules import TextEncoder, TokenEmbedding
from ..variants import build_model, register_model

AGGREGATIONS = ("maxpool", "mmt_maxpool", "mmt")


@dataclass
class MMTConfig:
    img_size: int = 32                      # frame side in pixels
    num_frames: int = 6                     # temporal embeddings available (clips may be shorter)
    aggregation: str = "mmt"                # "maxpool" (COLL), "mmt_maxpool" ([AGG] only in), "mmt" (frame tokens)
    frame_model: str = "vit_micro_patch4_32"   # registered image encoder giving one feature per frame
    frame_args: dict[str, Any] = field(default_factory=lambda: {"patch_size": 8, "depth": 2})
    freeze_frames: bool = False             # keep the frame encoder fixed (a pre-trained expert, as the paper's)
    modalities: tuple[str, ...] = ("rgb",)  # one feature stream per entry; only "rgb" (frames) is built here
    dim: int = 64                           # MMT width
    depth: int = 2                          # MMT layers
    heads: int = 4
    mlp_ratio: float = 2.0
    dropout: float = 0.1
    vocab_size: int = 64                    # the data's word-level vocabulary (the study passes its size)
    context_length: int = 24                # text positions
    text_dim: int = 64
    text_depth: int = 2
    text_heads: int = 4
    embed_dim: int = 64                     # the joint video-text space
    num_classes: int = 0                    # unused: retrieval has no classifier
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)


class GatedEmbedding(nn.Module):
    """Miech et al.'s gated embedding unit (COLL, MMT's text and video heads): z = W1 x; z = z * sigmoid(W2 z);
    (.., in_dim) -> (.., out_dim)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.fc, self.gate = nn.Linear(in_dim, out_dim), nn.Linear(out_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        z = self.fc(x)
        return z * torch.sigmoid(self.gate(z))


class VideoTextRetrieval(nn.Module):
    """frames (B_v, T, 3, S, S) normalised, ids (B_t, L) long, mask (B_t, L) bool (True = token) -> dict:
    similarity (B_v, B_t) cosines, video_embeds (B_v, E) and text_embeds (B_t, E), L2-normalised."""

    def __init__(self, cfg: MMTConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        cfg = MMTConfig(**{**asdict(cfg or MMTConfig()), **kwargs})
        if cfg.aggregation not in AGGREGATIONS:
            raise VitlabError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {cfg.aggregation!r}")
        if tuple(cfg.modalities) != ("rgb",):
            raise VitlabError(f"only the 'rgb' (frames) modality has a feature stream here, got {cfg.modalities}")
        self.cfg, self.num_classes = cfg, 0
        self.frame_encoder = build_model(cfg.frame_model, num_classes=0, img_size=cfg.img_size, **cfg.frame_args)
        if cfg.freeze_frames:
            self.frame_encoder.requires_grad_(False)
        feat_dim = self.frame_encoder.cfg.dim if hasattr(self.frame_encoder.cfg, "dim") else \
            self.frame_encoder.num_features
        M = len(cfg.modalities)
        if cfg.aggregation == "maxpool":
            self.video_head = GatedEmbedding(feat_dim, cfg.embed_dim)
        else:
            self.feature_proj = nn.ModuleList(nn.Linear(feat_dim, cfg.dim) for _ in range(M))     # W_m
            self.modality_embed = nn.Parameter(torch.randn(M, cfg.dim) * 0.02)                  # E_m
            self.temporal_embed = nn.Parameter(torch.randn(1 + cfg.num_frames, cfg.dim) * 0.02)  # T_agg, T_1..T
            self.mmt = TransformerEncoder(cfg.depth, cfg.dim, cfg.heads, int(cfg.dim * cfg.mlp_ratio), cfg.dropout,
                                          norm_first=True, act_layer=nn.GELU)
            self.video_head = GatedEmbedding(cfg.dim, cfg.embed_dim)
        embed = TokenEmbedding(cfg.vocab_size, cfg.text_dim, cfg.context_length, positions="learned",
                               dropout=cfg.dropout, scale=False)
        self.text = TextEncoder(embed, cfg.text_depth, cfg.text_dim, cfg.text_heads, int(cfg.text_dim * 2),
                                dropout=cfg.dropout, norm_first=True, act_layer=nn.GELU)
        self.text_head = GatedEmbedding(cfg.text_dim, cfg.embed_dim)

    # --- video side ------------------------------------------------------------------------------------------------
    def frame_features(self, frames: Tensor) -> Tensor:
        """(B, T, 3, S, S) -> (B, T, F): the image encoder's pooled feature of every frame."""
        B, T = frames.shape[:2]                                              # clips, frames
        x = frames.flatten(0, 1)                                             # (B * T, 3, S, S)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.cfg.freeze_frames):
            feats = self.frame_encoder.forward_head(self.frame_encoder.forward_features(x), pre_logits=True)
        return feats.view(B, T, -1)                                          # (B, T, F)

    def video_tokens(self, feats: Tensor) -> Tensor:
        """(B, T, F) -> the MMT's input (B, 1 + T, dim) ([AGG], frames), or (B, 1, dim) for max-pool input."""
        B, T, _ = feats.shape
        if T > self.cfg.num_frames:
            raise VitlabError(f"{T} frames exceed the model's {self.cfg.num_frames} temporal embeddings")
        m = 0                                                                # the one modality: rgb
        proj = self.feature_proj[m](feats)                                   # (B, T, dim)
        agg = proj.max(dim=1, keepdim=True).values                           # (B, 1, dim): [AGG] = max-pool (§3.1)
        if self.cfg.aggregation == "mmt_maxpool":
            return agg + self.modality_embed[m] + self.temporal_embed[0]
        tokens = torch.cat([agg, proj], dim=1)                               # (B, 1 + T, dim)
        return tokens + self.modality_embed[m] + self.temporal_embed[:1 + T]

    def encode_video(self, frames: Tensor) -> Tensor:
        """(B, T, 3, S, S) -> (B, embed_dim), unnormalised."""
        feats = self.frame_features(frames)                                  # (B, T, F)
        if self.cfg.aggregation == "maxpool":
            return self.video_head(feats.max(dim=1).values)                  # COLL: max over time
        out = self.mmt(self.video_tokens(feats))                             # (B, N, dim)
        return self.video_head(out[:, 0])                                    # the [AGG] output

    # --- text side ---------------------------------------------------------------------------------------------
    def encode_text(self, input_ids: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B, L) long, mask (B, L) bool True = token -> (B, embed_dim), unnormalised (mean over tokens)."""
        if input_ids.shape[1] > self.cfg.context_length:
            raise VitlabError(f"{input_ids.shape[1]} tokens exceed the context length {self.cfg.context_length}")
        mask = torch.ones_like(input_ids, dtype=torch.bool) if mask is None else mask
        x = self.text(input_ids, mask)                                       # (B, L, text_dim)
        w = mask.unsqueeze(-1).float()                                       # (B, L, 1)
        return self.text_head((x * w).sum(1) / w.sum(1).clamp(min=1))

    def forward(self, frames: Tensor, input_ids: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        video = F.normalize(self.encode_video(frames), dim=-1)              # (B_v, E)
        text = F.normalize(self.encode_text(input_ids, mask), dim=-1)       # (B_t, E)
        return {"similarity": video @ text.t(), "video_embeds": video, "text_embeds": text}

    def agg_attention(self, frames: Tensor) -> Tensor:
        """The [AGG] token's attention to each frame token, per layer, heads averaged: (B, depth, T)."""
        from ..explain.recording import recording

        if self.cfg.aggregation != "mmt":
            raise VitlabError("only the 'mmt' aggregation attends over frame tokens")
        with torch.no_grad():
            tokens = self.video_tokens(self.frame_features(frames))         # (B, 1 + T, dim)
            with recording(self.mmt) as weights:
                self.mmt(tokens)
        return torch.stack([w[:, :, 0, 1:].mean(1) for w in weights], dim=1)   # (B, depth, T)


# --- losses -----------------------------------------------------------------------------------------------------
def max_margin_ranking_loss(similarity: Tensor, margin: float = 0.05) -> Tensor:
    """Gabeur et al. §3.3 (eq. 7), pair i the match:
    L = 1/B sum_i sum_{j != i} [max(0, s_ij - s_ii + m) + max(0, s_ji - s_ii + m)], similarity (B, B)."""
    B = similarity.shape[0]
    diag = similarity.diagonal().unsqueeze(1)                                # (B, 1): s_ii
    off = ~torch.eye(B, dtype=torch.bool, device=similarity.device)
    row = (similarity - diag + margin).clamp(min=0)                          # s_ij - s_ii + m
    col = (similarity.t() - diag + margin).clamp(min=0)                      # s_ji - s_ii + m
    return (row[off].sum() + col[off].sum()) / B


def info_nce_loss(similarity: Tensor, temperature: float = 0.05) -> Tensor:
    """Symmetric InfoNCE over the batch on cosines / temperature (CLIP's loss, vitlab.models.clip.clip_loss)."""
    from .clip import clip_loss

    return clip_loss(similarity / temperature)


LOSSES = {"max_margin": max_margin_ranking_loss, "infonce": info_nce_loss}


# --- variants ---------------------------------------------------------------------------------------------------
@register_model(task="video_text")
def mmt_micro_32(**kw: Any) -> VideoTextRetrieval:
    """MMT over ordered frame tokens with [AGG]: frames from a 2-layer ViT-Micro/8 at 32 px, a 2x64 MMT."""
    return VideoTextRetrieval(MMTConfig(), **kw)


@register_model(task="video_text")
def mmt_maxpool_micro_32(**kw: Any) -> VideoTextRetrieval:
    """mmt_micro_32 fed the max-pooled frame feature only (the [AGG] token): no temporal order."""
    return VideoTextRetrieval(MMTConfig(aggregation="mmt_maxpool"), **kw)


@register_model(task="video_text")
def coll_maxpool_micro_32(**kw: Any) -> VideoTextRetrieval:
    """COLL-style: the same frame encoder, max-pool over time and a gated embedding unit, no transformer."""
    return VideoTextRetrieval(MMTConfig(aggregation="maxpool"), **kw)
