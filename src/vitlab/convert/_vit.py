"""Shared by the ViT/DeiT converters: read the architecture off a vitlab-named state dict, name the model.

Every converter first renames a foreign checkpoint to vitlab names; what the weights cannot tell (heads, LayerNorm
eps, normalisation) comes from the source's config or the source library's convention.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor

from ..errors import VitlabError
from ..variants import build_model, list_models
from . import Checkpoint
from ._keymap import count_blocks

log = logging.getLogger(__name__)

# Heads per width of the standard sizes (ViT Table 1, DeiT Ti/S, big_vision's M/So400m/g/G): a timm state dict does
# not record the head count, the width almost always implies it.
HEADS_BY_DIM = {192: 3, 384: 6, 512: 8, 768: 12, 1024: 16, 1152: 16, 1280: 16, 1408: 16, 1664: 16}
SIZE_BY_DIM = {192: "tiny", 384: "small", 768: "base", 1024: "large", 1280: "huge"}


def vit_architecture(sd: dict[str, Tensor], num_heads: int | None = None,
                     img_size: int | tuple[int, int] | None = None) -> dict[str, Any]:
    """ViTConfig arguments that the weights determine (plus num_heads / img_size when given)."""
    if "patch_embed.proj.weight" not in sd:
        raise VitlabError("not a ViT checkpoint: no patch embedding weight")
    w = sd["patch_embed.proj.weight"]                                   # (dim, in_chans, p, p)
    dim, in_chans, ph, pw = w.shape
    if ph != pw:
        raise VitlabError(f"non-square patches {ph}x{pw} are not supported")
    depth = count_blocks(sd.keys(), "blocks.{i}.norm1.weight")
    if depth == 0:
        raise VitlabError("not a ViT checkpoint: no transformer blocks")
    if num_heads is None:
        if dim not in HEADS_BY_DIM:
            raise VitlabError(f"cannot tell the number of attention heads for width {dim}: name the model "
                              f"(--model) or pass num_heads")
        num_heads = HEADS_BY_DIM[dim]
    if dim % num_heads:
        raise VitlabError(f"width {dim} is not divisible by {num_heads} heads")
    class_token = "cls_token" in sd
    distilled = "dist_token" in sd
    num_prefix = int(class_token) + int(distilled)
    args: dict[str, Any] = {
        "dim": dim, "depth": depth, "num_heads": num_heads, "patch_size": ph, "in_chans": in_chans,
        "mlp_ratio": mlp_ratio_for(sd["blocks.0.mlp.fc1.weight"].shape[0], dim),
        "qkv_bias": "blocks.0.attn.qkv.bias" in sd,
        "class_token": class_token,
        "pool": "avg" if "fc_norm.weight" in sd or not class_token else "cls",
        "fc_norm": "fc_norm.weight" in sd,
        "representation_size": sd["pre_logits.fc.weight"].shape[0] if "pre_logits.fc.weight" in sd else 0,
        "num_classes": sd["head.weight"].shape[0] if "head.weight" in sd else 0,
        "pos_embed": "learned" if "pos_embed" in sd else "none",
    }
    if img_size is None:
        if "pos_embed" not in sd:
            raise VitlabError("checkpoint has no position embedding: pass the image size")
        n = sd["pos_embed"].shape[1] - num_prefix
        side = round(n ** 0.5)
        if side * side != n:
            raise VitlabError(f"position embedding of {n} patches is not a square grid: pass the image size")
        img_size = side * ph
    args["img_size"] = img_size if isinstance(img_size, int) or img_size[0] != img_size[1] else int(img_size[0])
    if distilled:
        args["distilled"] = True
        args["dist_head"] = "head_dist.weight" in sd or args["num_classes"] == 0
    return args


def mlp_ratio_for(hidden: int, dim: int) -> float:
    """The mlp_ratio whose int(dim * ratio) is exactly `hidden` (hidden / dim can round just below it)."""
    ratio = hidden / dim
    return ratio if int(dim * ratio) == hidden else (hidden + 0.5) / dim


def vit_model_name(family: str, args: dict[str, Any]) -> str:
    """A registered name close to the architecture (the arguments stored beside it carry the exact settings)."""
    size = SIZE_BY_DIM.get(args["dim"], "base")
    img = args["img_size"] if isinstance(args["img_size"], int) else 224
    if family == "deit":
        size = size if size in ("tiny", "small", "base") else "base"
        distilled = "distilled_" if args.get("distilled") else ""
        name = f"deit_{size}_{distilled}patch16_{img if img in (224, 384) and size == 'base' else 224}"
        return name if name in list_models() else f"deit_base_{distilled}patch16_224"
    name = f"vit_{size}_patch{args['patch_size']}_{img}"
    if name in list_models():
        return name
    same_size = list_models(f"vit_{size}_patch*")
    return same_size[0] if same_size else "vit_base_patch16_224"


def vit_checkpoint(sd: dict[str, Tensor], *, family: str, source: str, num_heads: int | None = None,
                   img_size: int | tuple[int, int] | None = None, norm_eps: float = 1e-6,
                   mean: Any = None, std: Any = None, classes: list[str] | None = None,
                   interpolation: str = "bicubic", antialias: bool = False, name: str | None = None,
                   **extra_args: Any) -> Checkpoint:
    """A Checkpoint for a ViT/DeiT whose weights already carry vitlab names."""
    args = vit_architecture(sd, num_heads, img_size)
    args["norm_eps"] = norm_eps
    args.update(extra_args)
    name = name or vit_model_name("deit" if args.get("distilled") else family, args)
    if name.startswith("deit"):
        args.setdefault("distilled", False)
        args.setdefault("dist_head", True)
    elif args.pop("distilled", False):
        raise VitlabError(f"the checkpoint has a distillation token: name a deit_*_distilled model, not {name}")
    else:
        args.pop("dist_head", None)
    if mean is not None and std is not None:
        args["mean"], args["std"] = [float(x) for x in mean], [float(x) for x in std]
    img = args["img_size"]
    if not isinstance(img, int):          # record a non-square grid, so resampling to another size knows it
        sd = {**sd, "_grid_size": (img[0] // args["patch_size"], img[1] // args["patch_size"])}
    meta: dict[str, Any] = {"source_format": source}
    if classes:
        meta["classes"] = list(classes)
    if "mean" in args:
        meta["mean"], meta["std"] = args["mean"], args["std"]
    return Checkpoint(name, args, sd, meta, interpolation, antialias)


def registered_config(name: str) -> Any:
    """The config dataclass of a registered model, built on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        return build_model(name).cfg
