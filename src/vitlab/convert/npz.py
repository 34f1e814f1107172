"""Google's original ViT checkpoints (.npz of Flax parameters), in both layouts Google published:

- google-research/vision_transformer (the paper's release, AugReg): `Transformer/encoderblock_N/...` with
  `MultiHeadDotProductAttention_1`, `LayerNorm_2`, `MlpBlock_3`, and `Transformer/posembed_input/pos_embedding`
  of (1, 1 + N, dim) covering [CLS]; sometimes under `opt/target/`.
- google-research/big_vision: under `params/` or `params/img/`, blocks with `MultiHeadDotProductAttention_0`,
  `LayerNorm_1`, `MlpBlock_0`, a top-level `pos_embedding` of (1, N, dim) added *before* [CLS] is prepended (so
  [CLS] has no position), optionally a scanned `Transformer/encoderblock/...` with the layer index as leading axis.

Flax stores Dense kernels as (in, out), conv kernels as (h, w, in, out) and attention kernels per head:
q/k/v (dim, heads, head_dim), out (heads, head_dim, dim). Flax LayerNorm eps is 1e-6. np.load runs with
allow_pickle=False: an .npz cannot execute code.

The paper's hybrids (R50+ViT-B_16 and AugReg's R26+S/32, R50+L/32; vision_transformer layout) add a ResNet root and
stages at the top level (`conv_root/`, `block{s}/unit{j}/`): npz_hybrid.py holds that half's table, and such a
file loads as vitlab's BiT HybridViT (vit_base_r50_s16_*, vit_small_r26_s32_*, ...).
"""
from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import VitlabError
from ..layers import to_2tuple
from . import Checkpoint, Format, register_format
from ._keymap import KeyTable, fuse_qkv, rename, rename_or_raise, split_qkv
from ._vit import vit_checkpoint
from .npz_hybrid import backbone_from_npz, backbone_to_npz, is_hybrid_arrays, split_backbone

log = logging.getLogger(__name__)

_BLOCK = "Transformer/encoderblock_{i}/"


def _block_table(mha: str, ln2: str, mlp: str) -> KeyTable:
    b = _BLOCK
    return [
        (b + "LayerNorm_0/scale", "blocks.{i}.norm1.weight"), (b + "LayerNorm_0/bias", "blocks.{i}.norm1.bias"),
        (b + f"{mha}/query/kernel", "blocks.{i}.attn.q.weight"), (b + f"{mha}/query/bias", "blocks.{i}.attn.q.bias"),
        (b + f"{mha}/key/kernel", "blocks.{i}.attn.k.weight"), (b + f"{mha}/key/bias", "blocks.{i}.attn.k.bias"),
        (b + f"{mha}/value/kernel", "blocks.{i}.attn.v.weight"), (b + f"{mha}/value/bias", "blocks.{i}.attn.v.bias"),
        (b + f"{mha}/out/kernel", "blocks.{i}.attn.proj.weight"), (b + f"{mha}/out/bias", "blocks.{i}.attn.proj.bias"),
        (b + f"{ln2}/scale", "blocks.{i}.norm2.weight"), (b + f"{ln2}/bias", "blocks.{i}.norm2.bias"),
        (b + f"{mlp}/Dense_0/kernel", "blocks.{i}.mlp.fc1.weight"),
        (b + f"{mlp}/Dense_0/bias", "blocks.{i}.mlp.fc1.bias"),
        (b + f"{mlp}/Dense_1/kernel", "blocks.{i}.mlp.fc2.weight"),
        (b + f"{mlp}/Dense_1/bias", "blocks.{i}.mlp.fc2.bias"),
    ]


_TOP: KeyTable = [
    ("cls", "cls_token"),
    ("embedding/kernel", "patch_embed.proj.weight"), ("embedding/bias", "patch_embed.proj.bias"),
    ("Transformer/encoder_norm/scale", "norm.weight"), ("Transformer/encoder_norm/bias", "norm.bias"),
    ("pre_logits/kernel", "pre_logits.fc.weight"), ("pre_logits/bias", "pre_logits.fc.bias"),
    ("head/kernel", "head.weight"), ("head/bias", "head.bias"),
]
NPZ_VIT_KEYS: KeyTable = _TOP + [("Transformer/posembed_input/pos_embedding", "pos_embed")] + _block_table(
    "MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3")
NPZ_BIG_VISION_KEYS: KeyTable = _TOP + [("pos_embedding", "pos_embed")] + _block_table(
    "MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0")
LAYOUTS = {"vision_transformer": NPZ_VIT_KEYS, "big_vision": NPZ_BIG_VISION_KEYS}


# --- Flax tensor layouts <-> PyTorch ------------------------------------------------------------------------------
def flax_to_torch(name: str, w: Tensor) -> Tensor:
    """One Flax array as the PyTorch tensor of vitlab parameter `name` (before q/k/v fusion)."""
    if name == "patch_embed.proj.weight":
        return w.permute(3, 2, 0, 1)                                   # (h, w, in, dim) -> (dim, in, h, w)
    if name.endswith(("attn.q.weight", "attn.k.weight", "attn.v.weight")):
        return w.reshape(w.shape[0], -1).T                             # (dim, heads, hd) -> (heads*hd, dim)
    if name.endswith(("attn.q.bias", "attn.k.bias", "attn.v.bias")):
        return w.reshape(-1)                                           # (heads, hd) -> (heads*hd,)
    if name.endswith("attn.proj.weight"):
        return w.reshape(-1, w.shape[-1]).T                            # (heads, hd, dim) -> (dim, heads*hd)
    if name.endswith(".weight") and w.ndim == 2:
        return w.T                                                     # Dense (in, out) -> Linear (out, in)
    return w


def torch_to_flax(name: str, w: Tensor, num_heads: int) -> Tensor:
    """The inverse of flax_to_torch (for writing .npz files)."""
    if name == "patch_embed.proj.weight":
        return w.permute(2, 3, 1, 0)
    if name.endswith(("attn.q.weight", "attn.k.weight", "attn.v.weight")):
        return w.T.reshape(w.shape[1], num_heads, -1)
    if name.endswith(("attn.q.bias", "attn.k.bias", "attn.v.bias")):
        return w.reshape(num_heads, -1)
    if name.endswith("attn.proj.weight"):
        return w.T.reshape(num_heads, -1, w.shape[0])
    if name.endswith(".weight") and w.ndim == 2:
        return w.T
    return w


# --- reading ------------------------------------------------------------------------------------------------------
PREFIXES = ("opt/target/", "params/img/", "params/", "")


def is_npz(path: Path) -> bool:
    return path.is_file() and path.suffix == ".npz" and zipfile.is_zipfile(path)


def read_npz(path: Path, img_size: int | tuple[int, int] | None = None, model: str | None = None,
             **_: Any) -> Checkpoint:
    """Read a Google .npz; with `img_size`, resample its position table there the way Google's code does.
    `model` names the vitlab model of a hybrid (ResNet + ViT) file; a plain ViT's name comes from its shapes."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except ValueError as e:
        raise VitlabError(f"{path}: not a plain-array .npz ({e})") from None
    prefix = _prefix(arrays)
    if is_hybrid_arrays(arrays, prefix):
        return _read_hybrid(arrays, prefix, path, img_size, model)
    sd, layout = vitlab_names_from_npz(arrays, path)
    heads = arrays_heads(sd)
    sd = fuse_qkv({k: flax_to_torch(k, v) for k, v in sd.items()})
    if layout == "big_vision" and "cls_token" in sd and "pos_embed" in sd:
        sd["pos_embed"] = _position_for_cls(sd["pos_embed"])
    if img_size is not None and "pos_embed" in sd:
        patch = sd["patch_embed.proj.weight"].shape[-1]
        new_grid = tuple(s // patch for s in to_2tuple(img_size))
        sd["pos_embed"] = resample_like_google(sd["pos_embed"], new_grid, int("cls_token" in sd))
    # Resampled later (load_weights without img_size here): bilinear is the nearest of F.interpolate's modes.
    return vit_checkpoint(sd, family="vit", source=f"npz ({layout})", num_heads=heads, norm_eps=1e-6,
                          img_size=img_size, interpolation="bilinear", antialias=False)


def _read_hybrid(arrays: dict[str, np.ndarray], prefix: str, path: Path, img_size: int | tuple[int, int] | None,
                 model: str | None) -> Checkpoint:
    """A hybrid .npz: the ResNet through npz_hybrid's table, the ViT through this file's; then the timm-hybrid
    reader's architecture inference (the two share vitlab's parameter names)."""
    from .timm_hybrid import hybrid_checkpoint

    resnet, vit = split_backbone({k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)})
    sd, layout = vitlab_names_from_npz(vit, path)
    heads = arrays_heads(sd)
    sd = fuse_qkv({k: flax_to_torch(k, v) for k, v in sd.items()})
    sd.update(backbone_from_npz(_as_tensors(resnet, path), path))
    ckpt = hybrid_checkpoint(sd, heads, model, path, source=f"npz ({layout}, hybrid)", interpolation="bilinear",
                             antialias=False)
    if img_size is not None and "pos_embed" in sd:     # Google's zoom on the feature-map grid (stride, not 1x1)
        stride = 4 * 2 ** (len(ckpt.model_args["extra"]["backbone"]["layers"]) - 1)     # BiTConfig.stride
        new_grid = tuple(s // stride for s in to_2tuple(img_size))
        ckpt.state_dict["pos_embed"] = resample_like_google(sd["pos_embed"], new_grid, int("cls_token" in sd))
        ckpt.model_args["img_size"] = img_size
    return ckpt


def resample_like_google(pos_embed: Tensor, new_grid: tuple[int, int], num_prefix_tokens: int) -> Tensor:
    """Google's high-resolution fine-tuning (ViT §3.2): the grid part of the table is zoomed with
    scipy.ndimage.zoom(order=1), linear interpolation with corners aligned, which is F.interpolate(bilinear,
    align_corners=True). pos_embed (1, prefix + g*g, dim) -> (1, prefix + nh*nw, dim); prefix rows kept."""
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    side = round(grid.shape[1] ** 0.5)
    if side * side != grid.shape[1]:
        raise VitlabError(f"position table of {grid.shape[1]} patches is not a square grid")
    if (side, side) == tuple(new_grid):
        return pos_embed
    grid = grid.reshape(1, side, side, -1).permute(0, 3, 1, 2)                    # (1, dim, g, g)
    grid = torch.nn.functional.interpolate(grid.double(), size=new_grid, mode="bilinear", align_corners=True)
    grid = grid.to(pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, -1, pos_embed.shape[-1])   # (1, nh*nw, dim)
    return torch.cat([prefix, grid], dim=1)


def vitlab_names_from_npz(arrays: dict[str, np.ndarray], path: Path | str = "checkpoint"
                          ) -> tuple[dict[str, Tensor], str]:
    """Strip the prefix, unstack scanned blocks and rename; returns (Flax-shaped tensors with vitlab names, layout)."""
    prefix = _prefix(arrays)
    arrays = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
    if "embedding/kernel" not in arrays:
        raise VitlabError(f"{path}: no ViT embedding/kernel in this .npz (first keys: {', '.join(list(arrays)[:4])})")
    big_vision = prefix.startswith("params") or any("MultiHeadDotProductAttention_0" in k for k in arrays)
    arrays = _unstack_scanned(arrays)
    if big_vision and "pos_embedding" not in arrays:           # older big_vision kept it inside Transformer/
        for old in ("Transformer/posembed_input/pos_embedding", "Transformer/pos_embedding"):
            if old in arrays:
                arrays["pos_embedding"] = arrays.pop(old)
    layout = "big_vision" if big_vision else "vision_transformer"
    return rename_or_raise(_as_tensors(arrays, path), LAYOUTS[layout],
                           what=f"{path}: {layout} arrays this ViT converter does not support"), layout


def _prefix(arrays: dict[str, Any]) -> str:
    """Where the parameters sit in the file: `opt/target/` (a training state), big_vision's `params/...`, or top."""
    return next(p for p in PREFIXES if f"{p}embedding/kernel" in arrays or p == "")


def _as_tensors(arrays: dict[str, np.ndarray], path: Path | str) -> dict[str, Tensor]:
    tensors = {}
    for k, v in arrays.items():
        if v.dtype.kind not in "fiu":
            raise VitlabError(f"{path}: {k} has dtype {v.dtype}; only float/int arrays are read")
        tensors[k] = torch.from_numpy(np.ascontiguousarray(v)).float()
    return tensors


def arrays_heads(sd: dict[str, Tensor]) -> int:
    return int(sd["blocks.0.attn.q.weight"].shape[1])                   # query kernel (dim, heads, head_dim)


def _unstack_scanned(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """big_vision's scan-over-layers layout: `Transformer/encoderblock/X` (depth, ...) -> `encoderblock_{i}/X`."""
    scanned = "Transformer/encoderblock/"
    out = {}
    for k, v in arrays.items():
        if k.startswith(scanned):
            for i in range(v.shape[0]):
                out[f"Transformer/encoderblock_{i}/{k[len(scanned):]}"] = v[i]
        else:
            out[k] = v
    return out


def _position_for_cls(pe: Tensor) -> Tensor:
    """big_vision adds positions before prepending [CLS]: give [CLS] a zero position slot in our layout. (Old
    checkpoints whose table still covers [CLS], 1 + square, are already in our layout.)"""
    n = pe.shape[1]
    if round(n ** 0.5) ** 2 == n:
        return torch.cat([pe.new_zeros(1, 1, pe.shape[2]), pe], dim=1)
    return pe


register_format(Format("npz", is_npz, read_npz,
                       "a Google ViT .npz (vision_transformer or big_vision layout)"))


# --- writing (tests, and handing weights back to JAX users) -------------------------------------------------------
def vit_to_npz_arrays(model: torch.nn.Module, layout: str = "vision_transformer") -> dict[str, np.ndarray]:
    """A vitlab ViT's weights as Google's .npz arrays (`np.savez(path, **arrays)`). A BiT hybrid (HybridViT on
    models/bit.py) is written in the vision_transformer layout with its ResNet arrays at the top level."""
    if layout not in LAYOUTS:
        raise VitlabError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    c = model.cfg
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    resnet: dict[str, Tensor] = {}
    if any(k.startswith("patch_embed.backbone.") for k in sd):
        if layout != "vision_transformer" or c.extra.get("backbone", {}).get("kind") != "bit":
            raise VitlabError("only a BiT hybrid in the vision_transformer layout has a Google .npz form")
        resnet = backbone_to_npz(sd)
        sd = {k: v for k, v in sd.items() if not k.startswith("patch_embed.backbone.")}
    sd = split_qkv(sd)
    if layout == "big_vision" and "cls_token" in sd:
        pe = sd["pos_embed"]
        if pe[:, :1].abs().max() > 0:                  # fold [CLS]'s position into the token itself
            sd["cls_token"] = sd["cls_token"] + pe[:, :1]
        sd["pos_embed"] = pe[:, 1:]
    sd = {k: torch_to_flax(k, v, c.num_heads) for k, v in sd.items()}
    named, unknown = rename(sd, LAYOUTS[layout], reverse=True)
    if unknown:
        raise VitlabError(f"no {layout} name for {', '.join(unknown)}")
    prefix = "params/" if layout == "big_vision" else ""
    return {prefix + k: v.contiguous().numpy() for k, v in {**resnet, **named}.items()}
