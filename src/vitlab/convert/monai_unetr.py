"""MONAI's UNETR state dicts (`torch.save(monai.networks.nets.UNETR(...).state_dict(), path)`) -> vitlab's UNETR.

The architecture is read off the tensors: spatial dims and patch size from the patch projection's kernel, the input
size from the position embedding (a cube/square grid of 16 px patches), channels, feature size, depth, MLP width,
q/k/v bias, residual or plain conv blocks and the conv-block norm (batch: running statistics; MONAI's default
"instance": no parameters). The head count is not in the weights: it comes from `num_heads` (`vitlab convert
--num-heads`), else from the named model when its width matches, else MONAI's default 12. MONAI's blocks carry an
unused LayerNorm (`norm_cross_attn`, for cross-attention they do not have in UNETR): it is dropped.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import VitlabError
from . import FORMATS, Checkpoint, Format, register_format
from ._keymap import KeyTable, count_blocks, rename_or_raise
from .safe_load import TORCH_SUFFIXES, load_state_file, unwrap_state_dict

MONAI_DEFAULT_HEADS = 12

MONAI_UNETR_KEYS: KeyTable = [
    ("vit.patch_embedding.position_embeddings", "vit.pos_embed"),
    ("vit.patch_embedding.patch_embeddings.{p}", "vit.patch_embed.proj.{p}"),
    ("vit.blocks.{i}.norm1.{p}", "vit.blocks.{i}.norm1.{p}"),
    ("vit.blocks.{i}.attn.qkv.{p}", "vit.blocks.{i}.attn.qkv.{p}"),
    ("vit.blocks.{i}.attn.out_proj.{p}", "vit.blocks.{i}.attn.proj.{p}"),
    ("vit.blocks.{i}.norm2.{p}", "vit.blocks.{i}.norm2.{p}"),
    ("vit.blocks.{i}.mlp.linear1.{p}", "vit.blocks.{i}.mlp.fc1.{p}"),
    ("vit.blocks.{i}.mlp.linear2.{p}", "vit.blocks.{i}.mlp.fc2.{p}"),
    ("vit.norm.{p}", "vit.norm.{p}"),
    ("encoder1.layer.{c}.conv.{p}", "stem.{c}.{p}"),                  # the conv stem on the input (conv1..3)
    ("encoder1.layer.{n}.{p}", "stem.{n}.{p}"),                       # its norms (batch norm only)
    ("out.conv.conv.{p}", "head.{p}"),
]
# encoder2..4 (hidden states 3, 6, 9) are our skips.0..2; decoder5..2 our ups.0..3
for _k, _j in ((2, 0), (3, 1), (4, 2)):
    MONAI_UNETR_KEYS += [
        (f"encoder{_k}.transp_conv_init.conv.{{p}}", f"skips.{_j}.up.{{p}}"),
        (f"encoder{_k}.blocks.{{i}}.0.conv.{{p}}", f"skips.{_j}.blocks.{{i}}.0.{{p}}"),
        (f"encoder{_k}.blocks.{{i}}.1.{{c}}.conv.{{p}}", f"skips.{_j}.blocks.{{i}}.1.{{c}}.{{p}}"),
        (f"encoder{_k}.blocks.{{i}}.1.{{n}}.{{p}}", f"skips.{_j}.blocks.{{i}}.1.{{n}}.{{p}}"),
        (f"encoder{_k}.blocks.{{i}}.conv.{{p}}", f"skips.{_j}.blocks.{{i}}.{{p}}"),   # conv_block=False
    ]
for _k, _j in ((5, 0), (4, 1), (3, 2), (2, 3)):
    MONAI_UNETR_KEYS += [
        (f"decoder{_k}.transp_conv.conv.{{p}}", f"ups.{_j}.up.{{p}}"),
        (f"decoder{_k}.conv_block.{{c}}.conv.{{p}}", f"ups.{_j}.conv.{{c}}.{{p}}"),
        (f"decoder{_k}.conv_block.{{n}}.{{p}}", f"ups.{_j}.conv.{{n}}.{{p}}"),
    ]


def is_monai_unetr_state(sd: dict[str, Tensor]) -> bool:
    return "vit.patch_embedding.position_embeddings" in sd and "encoder1.layer.conv1.conv.weight" in sd


def is_monai_unetr(path: Path) -> bool:
    """A PyTorch/safetensors file whose keys are MONAI UNETR's (peeked memory-mapped, nothing unpickled)."""
    if not (path.is_file() and path.suffix in TORCH_SUFFIXES + (".safetensors",)):
        return False
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                keys = set(f.keys())
            return "vit.patch_embedding.position_embeddings" in keys and "encoder1.layer.conv1.conv.weight" in keys
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return is_monai_unetr_state(unwrap_state_dict(obj, path))
    except Exception:  # noqa: BLE001 - not readable this way: another format's reader says why
        return False


def read_monai_unetr(path: Path, trust_pickle: bool = False, model: str | None = None,
                     num_heads: int | None = None, **_: Any) -> Checkpoint:
    sd = load_state_file(path, trust_pickle)
    return monai_unetr_checkpoint(sd, model, num_heads, path)


def monai_unetr_checkpoint(sd: dict[str, Tensor], name: str | None = None, num_heads: int | None = None,
                           path: Path | str = "checkpoint") -> Checkpoint:
    """A MONAI UNETR state dict -> Checkpoint of our UNETR (architecture read off the tensors)."""
    if "vit.patch_embedding.patch_embeddings.1.weight" in sd:
        raise VitlabError(f"{path}: MONAI UNETR with proj_type='perceptron' is not supported (only 'conv')")
    sd = {k: v for k, v in sd.items() if ".norm_cross_attn." not in k}
    ours = rename_or_raise(sd, MONAI_UNETR_KEYS, what=f"{path}: MONAI UNETR keys this converter does not know")
    w = ours["vit.patch_embed.proj.weight"]                             # (dim, C, *p)
    pos = ours["vit.pos_embed"]                                         # (1, N, dim)
    spatial_dims, dim, patch = w.dim() - 2, w.shape[0], w.shape[-1]
    n = pos.shape[1]
    side = round(n ** (1 / spatial_dims))
    if side ** spatial_dims != n:
        raise VitlabError(f"{path}: {n} position embeddings are not a {'cube' if spatial_dims == 3 else 'square'} "
                          f"grid: non-{'cubic' if spatial_dims == 3 else 'square'} inputs are not supported")
    keys = set(ours)
    norm = ("batch" if "stem.norm1.running_mean" in keys else "instance" if "stem.norm1.weight" in keys
            else "instance_noaffine")
    heads = num_heads
    if heads is None and name:
        from ..variants import default_config

        named = default_config(name)
        heads = named.get("num_heads") if named.get("dim") == dim else None
    heads = heads or MONAI_DEFAULT_HEADS
    if dim % heads:
        raise VitlabError(f"{path}: hidden size {dim} is not divisible by {heads} heads (MONAI's default is "
                          f"{MONAI_DEFAULT_HEADS}); the head count is not in the weights: pass it with --num-heads "
                          f"(num_heads= in Python)")
    args: dict[str, Any] = dict(
        spatial_dims=spatial_dims, img_size=side * patch, in_chans=w.shape[1], num_classes=ours["head.weight"].shape[0],
        patch_size=patch, dim=dim, depth=count_blocks(keys, "vit.blocks.{i}.norm1.weight"), num_heads=heads,
        mlp_dim=ours["vit.blocks.0.mlp.fc1.weight"].shape[0], qkv_bias="vit.blocks.0.attn.qkv.bias" in keys,
        feature_size=ours["stem.conv1.weight"].shape[0], norm=norm, res_block="ups.0.conv.conv3.weight" in keys,
        conv_block="skips.0.blocks.0.1.conv1.weight" in keys or "skips.0.blocks.0.weight" not in keys,
        norm_eps=1e-5)
    if patch != 16:
        raise VitlabError(f"{path}: MONAI's UNETR has 16 px patches, these weights have {patch}")
    name = name or ("unetr_b16_3d_96" if spatial_dims == 3 else "unetr_b16_2d_224")
    return Checkpoint(name, args, ours, {"source_format": "monai-unetr"}, interpolation="trilinear")


_FORMAT = register_format(Format("monai-unetr", is_monai_unetr, read_monai_unetr,
                                 "a MONAI UNETR state dict (.pth/.pt/.safetensors)"))
# checked before the generic timm/PyTorch state-dict reader, whatever order the format modules loaded in
FORMATS.remove(_FORMAT)
FORMATS.insert(next((i for i, f in enumerate(FORMATS) if f.name == "timm"), len(FORMATS)), _FORMAT)
