"""timm state dicts (.pth / .pt / .bin / .safetensors; bare or under 'model' / 'state_dict'; `module.` prefixes).

A state dict does not say which architecture it belongs to, so each family is one `TimmFamily`, registered under
the timm model-name prefix it covers ("vit_", "deit_"), with a `detect` that recognises its weights when no name is
given. A model family adds its own from its own file:

    from vitlab.convert.timm import TimmFamily, register_timm_family
    register_timm_family(TimmFamily("swin_", detect=lambda sd: "layers.0.blocks.0.attn.relative_position_index"
                                    in sd, read=read_swin))

`read(state_dict, name, path)` gets the unwrapped state dict and the model name the user gave (or None).
timm resamples position embeddings bicubic with antialiasing, and its ViT LayerNorms use eps 1e-6.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from ..errors import VitlabError
from . import Checkpoint, Format, register_format
from ._keymap import KeyTable, rename_or_raise
from ._vit import registered_config, vit_checkpoint
from .safe_load import TORCH_SUFFIXES, load_state_file

log = logging.getLogger(__name__)


@dataclass
class TimmFamily:
    prefix: str                                                        # timm model names it covers: "vit_", "deit_"
    detect: Callable[[dict[str, Tensor]], bool]                        # are these weights of this family?
    read: Callable[[dict[str, Tensor], str | None, Path], Checkpoint]  # (state dict, model name, path) -> Checkpoint


TIMM_FAMILIES: dict[str, TimmFamily] = {}


def register_timm_family(family: TimmFamily) -> TimmFamily:
    TIMM_FAMILIES[family.prefix] = family
    return family


def timm_family(sd: dict[str, Tensor], name: str | None) -> TimmFamily | None:
    """The family named by `name` (longest matching prefix), else the first whose detector accepts the weights."""
    if name:
        matches = [f for p, f in TIMM_FAMILIES.items() if name.startswith(p)]
        if matches:
            return max(matches, key=lambda f: len(f.prefix))
    return next((f for f in TIMM_FAMILIES.values() if f.detect(sd)), None)


def is_torch_file(path: Path) -> bool:
    return path.is_file() and path.suffix in TORCH_SUFFIXES + (".safetensors",)


def read_timm(path: Path, trust_pickle: bool = False, model: str | None = None, **_: Any) -> Checkpoint:
    sd = load_state_file(path, trust_pickle)
    if any(k.startswith(("vit.encoder.", "deit.encoder.", "encoder.layer.", "vit.layers.")) for k in sd):
        raise VitlabError(f"{path}: these are HF transformers weights: pass the directory that holds them with "
                          f"its config.json")
    family = timm_family(sd, model)
    if family is None:
        known = ", ".join(p + "*" for p in TIMM_FAMILIES)
        raise VitlabError(f"{path}: weights of no model family we read from timm state dicts ({known}); "
                          f"first keys: {', '.join(list(sd)[:4])}")
    return family.read(sd, model, path)


# --- ViT and DeiT ------------------------------------------------------------------------------------------------
# Our parameter names were chosen to be timm's, so the table is mostly identity; it also lists what timm renamed
# over the years (the representation layer, the old `gamma` layer-scale is refused as unsupported).
TIMM_VIT_KEYS: KeyTable = [
    ("cls_token", "cls_token"), ("dist_token", "dist_token"), ("pos_embed", "pos_embed"),
    ("patch_embed.proj.{p}", "patch_embed.proj.{p}"),
    ("blocks.{i}.norm1.{p}", "blocks.{i}.norm1.{p}"),
    ("blocks.{i}.attn.qkv.{p}", "blocks.{i}.attn.qkv.{p}"),
    ("blocks.{i}.attn.proj.{p}", "blocks.{i}.attn.proj.{p}"),
    ("blocks.{i}.norm2.{p}", "blocks.{i}.norm2.{p}"),
    ("blocks.{i}.mlp.fc1.{p}", "blocks.{i}.mlp.fc1.{p}"),
    ("blocks.{i}.mlp.fc2.{p}", "blocks.{i}.mlp.fc2.{p}"),
    ("norm.{p}", "norm.{p}"), ("fc_norm.{p}", "fc_norm.{p}"),
    ("pre_logits.fc.{p}", "pre_logits.fc.{p}"),
    ("head.{p}", "head.{p}"), ("head_dist.{p}", "head_dist.{p}"),
]


def _is_vit(sd: dict[str, Tensor]) -> bool:
    return ("patch_embed.proj.weight" in sd and "blocks.0.attn.qkv.weight" in sd
            and "patch_embed.backbone.stem.conv.weight" not in sd)              # hybrids: timm_hybrid.py


def read_timm_vit(sd: dict[str, Tensor], name: str | None, path: Path) -> Checkpoint:
    """timm VisionTransformer / VisionTransformerDistilled (vit_*, deit_*) -> vitlab."""
    vit_sd = rename_or_raise(sd, TIMM_VIT_KEYS, what=f"{path}: timm weights this ViT converter does not support")
    dim = vit_sd["patch_embed.proj.weight"].shape[0]
    named = registered_config(name) if name else None        # the head count a state dict cannot tell
    heads = named.num_heads if named is not None and named.dim == dim else None
    if "pos_embed" in vit_sd and "cls_token" in vit_sd:
        vit_sd = _embed_class_position(vit_sd)
    family = "deit" if (name or "").startswith("deit") or "dist_token" in vit_sd else "vit"
    return vit_checkpoint(vit_sd, family=family, source="timm", num_heads=heads, norm_eps=1e-6, name=name,
                          interpolation="bicubic", antialias=True)   # timm's resample_abs_pos_embed defaults


def _embed_class_position(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """timm's no_embed_class models (DeiT III, ...) give prefix tokens no position: pad their slots with zeros,
    which is the same computation in our layout (position added to [prefix; patches])."""
    import torch

    pe = sd["pos_embed"]                                                # (1, [prefix +] N, dim)
    num_prefix = 1 + int("dist_token" in sd)
    n = pe.shape[1]
    if round(n ** 0.5) ** 2 == n and round((n - num_prefix) ** 0.5) ** 2 != n - num_prefix:
        return {**sd, "pos_embed": torch.cat([pe.new_zeros(1, num_prefix, pe.shape[2]), pe], dim=1)}
    return sd


register_format(Format("timm", is_torch_file, read_timm,
                       "a timm/PyTorch state dict (.pth, .pt, .bin, .safetensors)"))
register_timm_family(TimmFamily("deit_", _is_vit, read_timm_vit))
register_timm_family(TimmFamily("vit_", _is_vit, read_timm_vit))
