"""timm hybrid ViT state dicts (vit_small_r26_s32_*, vit_base_r50_s16_*, vit_large_r50_s32_*) -> vitlab HybridViT.

timm builds these as a VisionTransformer whose patch embedding is a HybridEmbed around a ResNetV2 (BiT, without
pre-activation). Our BiT backbone (models/bit.py) uses timm's parameter names, so the backbone table is an identity
that says which keys we accept; the ViT part is the plain ViT table. Stage depths, widths and the stem width are
read off the shapes; the token grid off the position embedding (`hybrid_checkpoint`, shared with the Google .npz
reader, npz_hybrid.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from ..errors import VitlabError
from . import Checkpoint
from ._keymap import KeyTable, count_blocks, rename_or_raise
from ._vit import HEADS_BY_DIM, registered_config, vit_architecture
from .timm import TIMM_VIT_KEYS, TimmFamily, register_timm_family

BB = "patch_embed.backbone"
TIMM_BIT_KEYS: KeyTable = [
    (f"{BB}.stem.conv.weight", f"{BB}.stem.conv.weight"),
    (f"{BB}.stem.norm.{{p}}", f"{BB}.stem.norm.{{p}}"),
    (f"{BB}.stages.{{s}}.blocks.{{i}}.conv{{c}}.weight", f"{BB}.stages.{{s}}.blocks.{{i}}.conv{{c}}.weight"),
    (f"{BB}.stages.{{s}}.blocks.{{i}}.norm{{c}}.{{p}}", f"{BB}.stages.{{s}}.blocks.{{i}}.norm{{c}}.{{p}}"),
    (f"{BB}.stages.{{s}}.blocks.{{i}}.downsample.{{m}}.{{p}}",
     f"{BB}.stages.{{s}}.blocks.{{i}}.downsample.{{m}}.{{p}}"),           # m: conv (1x1, stride) or norm
]

# (stage depths, width) -> our registered name at 224; the 384 variant where the grid says so
KNOWN = {((2, 2, 2, 2), 384): "vit_small_r26_s32", ((2, 2, 2, 2), 768): "vit_base_r26_s32",
         ((3, 4, 9), 768): "vit_base_r50_s16", ((3, 4, 6, 3), 1024): "vit_large_r50_s32"}


def is_timm_hybrid(sd: dict[str, Tensor]) -> bool:
    return f"{BB}.stem.conv.weight" in sd and "blocks.0.attn.qkv.weight" in sd


def read_timm_hybrid(sd: dict[str, Tensor], name: str | None, path: Path) -> Checkpoint:
    sd = rename_or_raise(sd, TIMM_VIT_KEYS + TIMM_BIT_KEYS,
                         what=f"{path}: timm weights this hybrid-ViT converter does not support")
    dim = sd["patch_embed.proj.weight"].shape[0]
    named = registered_config(name) if name else None
    heads = named.num_heads if named is not None and named.dim == dim else HEADS_BY_DIM.get(dim)
    return hybrid_checkpoint(sd, heads, name, path, source="timm", interpolation="bicubic",
                             antialias=True)                                  # timm's resample defaults


def hybrid_checkpoint(sd: dict[str, Tensor], heads: int | None, name: str | None, path: Path | str, *,
                      source: str, interpolation: str, antialias: bool) -> Checkpoint:
    """A Checkpoint for a BiT-hybrid ViT whose weights already carry vitlab names (timm's or a Google .npz's):
    stage depths, widths and the stem width read off the shapes, the token grid off the position embedding."""
    if f"{BB}.stages.0.blocks.0.conv1.weight" not in sd:
        raise VitlabError(f"{path}: a stem-only hybrid (timm's vit_*_r_s16_p8, Google's R+Ti/16) is not supported")
    num_stages = count_blocks(sd.keys(), f"{BB}.stages.{{i}}.blocks.0.conv1.weight")
    stem = sd[f"{BB}.stem.conv.weight"]                                       # (stem_width, in_chans, 7, 7)
    backbone: dict[str, Any] = dict(
        kind="bit", stem_width=stem.shape[0],
        layers=tuple(count_blocks(sd.keys(), f"{BB}.stages.{s}.blocks.{{i}}.conv1.weight") for s in range(num_stages)),
        widths=tuple(sd[f"{BB}.stages.{s}.blocks.0.conv3.weight"].shape[0] for s in range(num_stages)))
    stride = 4 * 2 ** (num_stages - 1)
    n = sd["pos_embed"].shape[1] - int("cls_token" in sd)                     # tokens of the feature-map grid
    side = round(n ** 0.5)
    if side * side != n:
        raise VitlabError(f"{path}: position embedding of {n} tokens is not a square grid")
    dim = sd["patch_embed.proj.weight"].shape[0]
    args = vit_architecture(sd, heads, img_size=side * stride)
    args.pop("patch_size")                                                    # the backbone stride replaces it
    args.update(in_chans=stem.shape[1], norm_eps=1e-6, extra={"backbone": backbone})
    if name is None:
        base = KNOWN.get((backbone["layers"], dim), "vit_small_r26_s32")
        name = f"{base}_384" if side * stride == 384 and base != "vit_large_r50_s32" else f"{base}_224"
    return Checkpoint(name, args, sd, {"source_format": source}, interpolation, antialias)


register_timm_family(TimmFamily("vit_small_r26_", is_timm_hybrid, read_timm_hybrid))
register_timm_family(TimmFamily("vit_base_r26_", is_timm_hybrid, read_timm_hybrid))
register_timm_family(TimmFamily("vit_base_r50_", is_timm_hybrid, read_timm_hybrid))
register_timm_family(TimmFamily("vit_large_r50_", is_timm_hybrid, read_timm_hybrid))
