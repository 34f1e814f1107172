"""DAB-DETR's anchor-box queries (Liu et al., "DAB-DETR: Dynamic Anchor Boxes are Better Queries for DETR",
ICLR 2022) on vitlab's DETR: an aid to DETR's slow convergence, measured against the plain model in the README.

DETR's object queries are N learned vectors whose meaning the decoder must discover. Here each query is a learned
anchor box a = (cx, cy, w, h) in [0, 1]; its positional query is an MLP of the anchor's sine encoding, and every
decoder layer refines the box it was given:

    P_l   = MLP(PE(a_l))                          positional query of layer l: (B, N, d)
    hs_l  = DecoderLayer_l(hs_{l-1}; mem, P_l)    self-attention, cross-attention to mem, FFN
    b_l   = sigmoid(logit(a_l) + BoxMLP(hs_l))    the layer's box: a correction of its anchor
    a_l+1 = stop_gradient(b_l)                    the next layer starts from this layer's box

Everything else (backbone, encoder, heads, the set loss, the output dict) is DETR's; the class head reads every
layer's hs_l as there. Left out of the paper: width/height-modulated cross-attention and the temperature tuning.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from ..variants import register_model
from .detr import DETR, SMALL_64, BoxMLP, DETRConfig, sine_position_2d


class DABDETR(DETR):
    """DETR whose queries are anchor boxes refined layer by layer. Same inputs and output dict as DETR."""

    def __init__(self, cfg: DETRConfig | None = None, **kwargs: Any) -> None:
        super().__init__(cfg, **kwargs)
        del self.query_embed                                             # anchors replace the learned positions
        d = self.cfg.dim
        anchors = torch.rand(self.cfg.num_queries, 4)                    # centres uniform over the image
        anchors[:, 2:] = 0.1                                             # sizes: a tenth of the side
        self.anchors = nn.Parameter(_inverse_sigmoid(anchors))           # (N, 4), kept in logit space
        self.query_pos_mlp = BoxMLP(2 * d, d, d, num_layers=2)          # PE(anchor) (2d) -> positional query (d)

    def no_weight_decay(self) -> set[str]:
        return {"anchors"}

    def forward(self, x: Tensor, mask: Tensor | None = None) -> dict[str, Any]:
        B = x.shape[0]
        feats = self.input_proj(self.backbone(x))                         # (B, dim, h, w)
        h, w = feats.shape[-2:]
        pos = sine_position_2d(h, w, self.cfg.dim, None, self.cfg.pos_temperature, x.device).to(feats.dtype)
        memory = self.encoder(feats.flatten(2).transpose(1, 2), pos)      # (B, h*w, dim)
        hs = torch.zeros(B, self.num_queries, self.cfg.dim, device=x.device, dtype=memory.dtype)
        anchor = self.anchors.sigmoid().unsqueeze(0).expand(B, -1, -1)   # (B, N, 4)
        logits, boxes = [], []
        for layer in self.decoder.layers:
            query_pos = self.query_pos_mlp(anchor_sine(anchor, self.cfg.dim))   # (B, N, dim)
            hs = layer(hs, memory, query_pos=query_pos, memory_pos=pos)
            out = self.decoder.norm(hs)
            box = (_inverse_sigmoid(anchor) + self.box_head(out)).sigmoid()   # (B, N, 4)
            logits.append(self.head(out))
            boxes.append(box)
            anchor = box.detach()
        aux = [{"logits": c, "boxes": b} for c, b in zip(logits[:-1], boxes[:-1])] if self.cfg.aux_loss else []
        return {"logits": logits[-1], "boxes": boxes[-1], "aux": aux}


def anchor_sine(anchor: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """Sine encoding of boxes (..., 4) in [0, 1]: dim/2 channels per coordinate -> (..., 2 * dim)."""
    half = dim // 2
    freq = temperature ** (2 * (torch.arange(half, device=anchor.device) // 2) / half)   # (dim/2,)
    t = anchor[..., None] * (2 * math.pi) / freq                          # (..., 4, dim/2)
    t = torch.stack((t[..., 0::2].sin(), t[..., 1::2].cos()), dim=-1).flatten(-2)   # interleaved sin, cos
    return t.flatten(-2).to(anchor.dtype)                                 # (..., 4 * dim/2)


def _inverse_sigmoid(p: Tensor, eps: float = 1e-5) -> Tensor:
    p = p.clamp(eps, 1 - eps)
    return torch.log(p / (1 - p))


@register_model(task="detection")
def dab_detr_micro_64(**kw: Any) -> DABDETR:
    """detr_micro_64 with DAB-DETR's anchor-box queries refined layer by layer (no dropout: trained from scratch on
    the 64-px scenes)."""
    args = {**SMALL_64, "dim": 128, "num_heads": 4, "ffn_dim": 512, "dropout": 0.0,
            "backbone_args": dict(block="basic", layers=(1, 1, 1, 1), widths=(16, 32, 64, 128), stem="small",
                                  stem_width=16)}
    return DABDETR(DETRConfig(**{**args, **kw}))
