"""Swin state dicts from timm and from the original repository (microsoft/Swin-Transformer) -> vitlab swin_*.

Two layouts exist and both are read:
- original (and timm < 0.9): the patch merging ends stage i (`layers.{i}.downsample`), the head is `head`, and the
  index/mask buffers (`relative_position_index`, `attn_mask`) are stored;
- timm >= 0.9 (ours too): the merging starts stage i + 1 (`layers.{i+1}.downsample`), the head is `head.fc`.
The original layout is recognised by a merging in stage 0. A state dict does not record the input size: it comes
from the model name, else from a stored `attn_mask`, else the standard choice (last stage grid = one window).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from torch import Tensor

from ..errors import VitlabError
from ..imagenet import IMAGENET_MEAN, IMAGENET_STD
from ..variants import list_models
from . import Checkpoint
from ._keymap import KeyTable, count_blocks, rename_or_raise
from ._vit import registered_config
from .hf_swin import SWIN_SIZES, shift_merging
from .timm import TimmFamily, register_timm_family

log = logging.getLogger(__name__)

_BLOCK_KEYS: KeyTable = [
    (f"layers.{{i}}.blocks.{{j}}.{part}.{{p}}", f"layers.{{i}}.blocks.{{j}}.{part}.{{p}}")
    for part in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
] + [("layers.{i}.blocks.{j}.attn.relative_position_bias_table",
       "layers.{i}.blocks.{j}.attn.relative_position_bias_table")]
_STEM_KEYS: KeyTable = [("patch_embed.proj.{p}", "patch_embed.proj.{p}"), ("patch_embed.norm.{p}", "patch_norm.{p}"),
                        ("norm.{p}", "norm.{p}")]
TIMM_SWIN_KEYS: KeyTable = _STEM_KEYS + _BLOCK_KEYS + [
    ("layers.{i}.downsample.{m}.{p}", "layers.{i}.downsample.{m}.{p}"),   # merging at the start of stage i
    ("head.fc.{p}", "head.{p}"),
]
ORIGINAL_SWIN_KEYS: KeyTable = _STEM_KEYS + _BLOCK_KEYS + [
    ("layers.{i}.downsample.{m}.{p}", "_merge.{i}.{m}.{p}"),              # merging at the end of stage i
    ("head.{p}", "head.{p}"),
]
_BUFFERS = ("relative_position_index", "attn_mask")


def is_swin(sd: dict[str, Tensor]) -> bool:
    return "layers.0.blocks.0.attn.relative_position_bias_table" in sd and "layers.0.blocks.0.attn.qkv.weight" in sd


def is_original_layout(sd: dict[str, Tensor]) -> bool:
    return any(k.startswith("layers.0.downsample.") for k in sd)


def read_timm_swin(sd: dict[str, Tensor], name: str | None, path: Path) -> Checkpoint:
    """timm or original Swin state dict -> vitlab Checkpoint (timm layout, our names)."""
    original = is_original_layout(sd)
    masks = {k: v for k, v in sd.items() if k.endswith("attn_mask")}
    weights = {k: v for k, v in sd.items() if not k.endswith(_BUFFERS)}
    ours = rename_or_raise(weights, ORIGINAL_SWIN_KEYS if original else TIMM_SWIN_KEYS,
                           what=f"{path}: Swin weights this converter does not support")
    if original:
        ours = shift_merging(ours, +1)
    args = swin_architecture(ours)
    registered = _registered_swin(name)
    if registered is not None:
        args["img_size"] = registered.img_size
    else:
        args["img_size"] = _img_size_from_masks(masks, args) or \
            args["patch_size"] * args["window_size"] * 2 ** (len(args["depths"]) - 1)
        log.info("%s: input size not recorded in the weights, assuming %d (name the model to choose)", path,
                 args["img_size"])
    model = name if registered is not None else SWIN_SIZES.get((args["embed_dim"], tuple(args["depths"])),
                                                                "swin_tiny_patch4_window7_224")
    meta = {"source_format": "timm-original" if original else "timm", "mean": list(args["mean"]),
            "std": list(args["std"])}
    return Checkpoint(model, args, ours, meta, interpolation="bicubic", antialias=False)


def swin_architecture(sd: dict[str, Tensor]) -> dict[str, Any]:
    """SwinConfig arguments the (vitlab-named) weights determine."""
    w = sd["patch_embed.proj.weight"]                                          # (C, in_chans, p, p)
    embed_dim, in_chans, patch = w.shape[0], w.shape[1], w.shape[2]
    num_stages = count_blocks(sd.keys(), "layers.{i}.blocks.0.norm1.weight")
    depths = [count_blocks(sd.keys(), f"layers.{s}.blocks.{{i}}.norm1.weight") for s in range(num_stages)]
    heads = [sd[f"layers.{s}.blocks.0.attn.relative_position_bias_table"].shape[1] for s in range(num_stages)]
    window = (math.isqrt(sd["layers.0.blocks.0.attn.relative_position_bias_table"].shape[0]) + 1) // 2
    return {
        "patch_size": patch, "in_chans": in_chans, "embed_dim": embed_dim, "depths": depths, "num_heads": heads,
        "window_size": window,
        "mlp_ratio": sd["layers.0.blocks.0.mlp.fc1.weight"].shape[0] / embed_dim,
        "qkv_bias": "layers.0.blocks.0.attn.qkv.bias" in sd, "norm_eps": 1e-5,
        "num_classes": sd["head.weight"].shape[0] if "head.weight" in sd else 0,
        "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


def _registered_swin(name: str | None) -> Any:
    if not name:
        return None
    if name not in list_models("swin_*"):
        raise VitlabError(f"{name}: not a registered Swin model (choose from {', '.join(list_models('swin_*'))})")
    return registered_config(name)


def _img_size_from_masks(masks: dict[str, Tensor], args: dict[str, Any]) -> int | None:
    """The original code stores each shifted block's mask (windows, M^2, M^2): stage 0's gives the grid side."""
    mask = masks.get("layers.0.blocks.1.attn_mask")
    if mask is None:
        return None
    side = math.isqrt(mask.shape[0]) * args["window_size"]
    return side * args["patch_size"]


register_timm_family(TimmFamily("swin_", is_swin, read_timm_swin))
