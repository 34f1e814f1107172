"""The ResNet half of Google's hybrid ViT .npz files (google-research/vision_transformer: R50+ViT-B_16,
R26+S/32 and R50+L/32 of AugReg), read into and written from vitlab's BiT backbone (models/bit.py).

Google's hybrid (models_vit.py + models_resnet.py there) puts the ResNet's arrays at the top level, beside the ViT's:

    conv_root/kernel (7, 7, in, width)          gn_root/scale, gn_root/bias (width,)
    block{s}/unit{j}/conv1..3/kernel (kh, kw, in, out), gn1..3/scale|bias
    block{s}/unit{j}/conv_proj/kernel, gn_proj/scale|bias    (the projection shortcut of a stage's first unit)

with stages and units counted from 1; `embedding/kernel` is then the 1x1 "patch" convolution on the feature map,
(1, 1, C, dim), and everything under `Transformer/` is the plain ViT (npz.py's table). Flax convolution kernels
are HWIO; GroupNorm parameters are (C,) (older BiT code stored them as (1, 1, 1, C): both are read).

Numerics: Google standardises kernels as (w - mean) / (std + 1e-5) and runs GroupNorm with Flax's eps 1e-6;
vitlab (like timm, which loads the same files into the same ResNetV2) divides by sqrt(var + 1e-8) and uses
GroupNorm eps 1e-5. For trained kernels and feature maps the two differ far below float32 noise of the logits.
"""
from __future__ import annotations

import re

import numpy as np
from torch import Tensor

from ..errors import VitlabError
from ._keymap import KeyTable, rename, rename_or_raise

BB = "patch_embed.backbone"
UNIT = "block{s}/unit{i}/"      # zero-based here: `one_based` / `zero_based` convert Google's 1-based names
NPZ_BIT_KEYS: KeyTable = [
    ("conv_root/kernel", f"{BB}.stem.conv.weight"),
    ("gn_root/scale", f"{BB}.stem.norm.weight"), ("gn_root/bias", f"{BB}.stem.norm.bias"),
    (UNIT + "conv_proj/kernel", f"{BB}.stages.{{s}}.blocks.{{i}}.downsample.conv.weight"),
    (UNIT + "gn_proj/scale", f"{BB}.stages.{{s}}.blocks.{{i}}.downsample.norm.weight"),
    (UNIT + "gn_proj/bias", f"{BB}.stages.{{s}}.blocks.{{i}}.downsample.norm.bias"),
] + [row for c in (1, 2, 3) for row in [
    (UNIT + f"conv{c}/kernel", f"{BB}.stages.{{s}}.blocks.{{i}}.conv{c}.weight"),
    (UNIT + f"gn{c}/scale", f"{BB}.stages.{{s}}.blocks.{{i}}.norm{c}.weight"),
    (UNIT + f"gn{c}/bias", f"{BB}.stages.{{s}}.blocks.{{i}}.norm{c}.bias"),
]]

_ROOT = ("conv_root/", "gn_root/")
_UNIT_RE = re.compile(r"block(\d+)/unit(\d+)/")


def is_hybrid_arrays(arrays: dict[str, np.ndarray], prefix: str = "") -> bool:
    """Does this .npz (parameters under `prefix`) hold a ResNet root, i.e. is it a hybrid?"""
    return f"{prefix}conv_root/kernel" in arrays


def split_backbone(arrays: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(the ResNet's arrays, the ViT's arrays) of a prefix-stripped hybrid .npz."""
    resnet = {k: v for k, v in arrays.items() if k.startswith(_ROOT) or _UNIT_RE.match(k)}
    return resnet, {k: v for k, v in arrays.items() if k not in resnet}


def _shift_units(key: str, by: int) -> str:
    return _UNIT_RE.sub(lambda m: f"block{int(m[1]) + by}/unit{int(m[2]) + by}/", key, count=1)


def backbone_from_npz(resnet: dict[str, Tensor], path: object = "checkpoint") -> dict[str, Tensor]:
    """Google's ResNet arrays (float tensors, Flax shapes) -> vitlab BiT parameters (PyTorch shapes)."""
    if any(k.startswith("block0/") or "/unit0/" in k for k in resnet):
        raise VitlabError(f"{path}: ResNet blocks/units are counted from 1 in Google's layout, found a 0")
    zero = {_shift_units(k, -1): v for k, v in resnet.items()}
    sd = rename_or_raise(zero, NPZ_BIT_KEYS, what=f"{path}: ResNet arrays this hybrid converter does not support")
    out = {}
    for name, w in sd.items():
        if name.endswith("conv.weight") or re.search(r"\.conv\d\.weight\Z", name):
            if w.ndim != 4:
                raise VitlabError(f"{path}: {name} should be a (kh, kw, in, out) kernel, got {tuple(w.shape)}")
            out[name] = w.permute(3, 2, 0, 1)                                  # (kh, kw, in, out) -> (out, in, kh, kw)
        else:
            out[name] = w.reshape(-1)                                          # (C,) or (1, 1, 1, C) -> (C,)
    return out


def backbone_to_npz(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of backbone_from_npz for the backbone's entries of a vitlab state dict (others are ignored):
    Google names (1-based) -> Flax-shaped tensors."""
    backbone = {k: v for k, v in sd.items() if k.startswith(BB + ".")}
    named, unknown = rename(backbone, NPZ_BIT_KEYS, reverse=True)
    if unknown:
        raise VitlabError(f"no Google .npz name for {', '.join(unknown)}")
    return {_shift_units(k, 1): v.permute(2, 3, 1, 0) if v.ndim == 4 else v for k, v in named.items()}
