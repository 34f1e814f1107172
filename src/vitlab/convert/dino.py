"""The official DINO checkpoints (facebookresearch/dino) -> vitlab DINO models.

Two layouts:
- the released backbones (`dino_deitsmall16_pretrain.pth`, `dino_vitbase8_pretrain.pth`, ...): a bare state dict in
  timm's ViT names with no head. Read by vitlab.convert.timm as the plain ViT it is (k-NN / linear probes, explain,
  fine-tuning); named as a DINO model (`--model dino_vit_small_patch16_224`), it becomes the backbone of both
  networks, the heads left fresh.
- the full training checkpoint (`*_full_checkpoint.pth`, main_dino.py's `checkpoint.pth`): {"student", "teacher",
  "dino_loss": {"center"}, "epoch", "optimizer", "args"}; the student DDP-wrapped (`module.` prefix); each network a
  MultiCropWrapper with `backbone.*` (timm names) and `head.*` (DINOHead: mlp.0/2/4, or mlp.0/1/3/4/6 with the
  head's BatchNorms (use_bn_in_head), last_layer.weight_g/_v; a
  DINOv2-style `dino_head.*` is read alike). The argparse Namespace under "args" is allowed by the weights-only
  loader (it is plain data); nothing else beyond tensors is.

    HEAD_KEYS: ("head.mlp.{i}.{p}", "head.mlp.{i}.{p}"), ("head.last_layer.weight_g", ...), ...
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import VitlabError
from ..variants import default_config, list_models
from . import FORMATS, Checkpoint, Format
from ._keymap import KeyTable, rename_or_raise
from .safe_load import TORCH_SUFFIXES, load_torch
from .timm import TIMM_VIT_KEYS, TimmFamily, read_timm_vit, register_timm_family

log = logging.getLogger(__name__)

# official DINOHead name -> ours (the same: our DINOHead keeps the official names)
DINO_HEAD_KEYS: KeyTable = [
    ("mlp.{i}.{p}", "mlp.{i}.{p}"),
    ("last_layer.weight_g", "last_layer.weight_g"), ("last_layer.weight_v", "last_layer.weight_v"),
]
NETWORKS = ("student", "teacher")


def load_dino_file(path: Path, trust_pickle: bool = False, mmap: bool = False) -> Any:
    """torch.load, weights only, with argparse.Namespace (main_dino.py's saved args) allowed."""
    return load_torch(path, trust_pickle, safe_globals=(argparse.Namespace,), mmap=mmap)


def is_full_dino_checkpoint(path: Path) -> bool:
    if not (path.is_file() and path.suffix in TORCH_SUFFIXES):
        return False
    try:
        obj = load_dino_file(path, mmap=True)            # memory-mapped: the tensors are not read
    except VitlabError:
        return False
    return isinstance(obj, dict) and all(isinstance(obj.get(k), dict) for k in NETWORKS)


def _network_keys(raw: dict[str, Any], net: str, path: Path) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """One network's (backbone, head) state dicts, `module.` removed, in vitlab names."""
    sd = {k: v for k, v in raw.items() if isinstance(v, Tensor)}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    backbone = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    head = {k.split(".", 1)[1]: v for k, v in sd.items() if k.startswith(("head.", "dino_head."))}
    other = sorted(k for k in sd if not k.startswith(("backbone.", "head.", "dino_head.")))
    if not backbone or not head or other:
        raise VitlabError(f"{path}: '{net}' is not a DINO MultiCropWrapper state dict (backbone.* + head.*)"
                          + (f"; other keys: {', '.join(other[:4])}" if other else ""))
    backbone = {k: v for k, v in backbone.items() if not k.startswith("head.")}     # timm's empty head, if any
    what = f"{path}: {net} backbone weights this ViT converter does not support"
    backbone = rename_or_raise(backbone, TIMM_VIT_KEYS, what=what)
    head = rename_or_raise(head, DINO_HEAD_KEYS, what=f"{path}: {net} head weights that are not a DINOHead")
    return backbone, head


def dino_variant_for(backbone: dict[str, Tensor], name: str | None) -> str:
    """The registered dino_* variant whose backbone has these weights' width, depth and patch size."""
    if name:
        return name
    w = backbone["patch_embed.proj.weight"]                              # (dim, 3, p, p)
    depth = len({k.split(".")[1] for k in backbone if k.startswith("blocks.")})
    for candidate in list_models("dino_*"):
        cfg = default_config(candidate)
        bb = default_config(cfg["backbone"], img_size=cfg["img_size"])
        if (bb["dim"], bb["depth"], bb["patch_size"]) == (w.shape[0], depth, w.shape[-1]):
            return candidate
    raise VitlabError(f"no registered DINO model has a ViT of width {w.shape[0]}, depth {depth}, patch "
                      f"{w.shape[-1]}: name one (--model dino_...)")


def read_full_dino(path: Path, trust_pickle: bool = False, model: str | None = None, **_: Any) -> Checkpoint:
    """main_dino.py's checkpoint -> a vitlab DINO checkpoint (both networks, the center; the clock at 0)."""
    obj = load_dino_file(path, trust_pickle)
    state: dict[str, Tensor] = {}
    heads = {}
    for net in NETWORKS:
        backbone, head = _network_keys(obj[net], net, path)
        heads[net] = head
        state.update({f"{net}.backbone.{k}": v for k, v in backbone.items()})
        state.update({f"{net}.head.{k}": v for k, v in head.items()})
    name = dino_variant_for({k[len("student.backbone."):]: v for k, v in state.items()
                             if k.startswith("student.backbone.")}, model)
    head = heads["student"]
    out_dim, bottleneck = head["last_layer.weight_v"].shape
    args: dict[str, Any] = {"out_dim": int(out_dim), "bottleneck_dim": int(bottleneck),
                            "hidden_dim": int(head["mlp.0.weight"].shape[0]),
                            "norm_last_layer": bool(torch.all(head["last_layer.weight_g"] == 1)),
                            "head_bn": "mlp.1.running_mean" in head}      # use_bn_in_head: norms at mlp.1, mlp.4
    pe = state["student.backbone.pos_embed"]
    patch = state["student.backbone.patch_embed.proj.weight"].shape[-1]
    side = round((pe.shape[1] - 1) ** 0.5)
    args["img_size"] = int(side * patch)
    saved = obj.get("args")
    if saved is not None:                                  # the run's own settings, where they name ours
        for ours, theirs in (("student_temp", "student_temp"), ("teacher_temp", "teacher_temp"),
                             ("warmup_teacher_temp", "warmup_teacher_temp"),
                             ("momentum_teacher", "momentum_teacher"), ("num_local_crops", "local_crops_number")):
            value = getattr(saved, theirs, None) if not isinstance(saved, dict) else saved.get(theirs)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                args[ours] = value
    center = (obj.get("dino_loss") or {}).get("center")
    state["center"] = center.float().reshape(1, -1) if isinstance(center, Tensor) else torch.zeros(1, out_dim)
    state["step"] = torch.zeros((), dtype=torch.long)
    state["teacher_temp"] = torch.tensor(float(args.get("teacher_temp", 0.07)))
    meta = {"source_format": "dino", "epoch": obj.get("epoch") if isinstance(obj.get("epoch"), int) else None}
    return Checkpoint(name, args, state, meta, interpolation="bicubic")


def read_dino_backbone(sd: dict[str, Tensor], name: str | None, path: Path) -> Checkpoint:
    """A released backbone (timm names, no head) named as a DINO model: both networks' backbone, fresh heads."""
    if name is None:
        raise VitlabError(f"{path}: name the DINO model these backbone weights are for")
    backbone_name = default_config(name)["backbone"]
    vit = read_timm_vit(sd, backbone_name, path)
    bb = {k: v for k, v in vit.state_dict.items() if not k.startswith("head.")}
    state = {f"{net}.backbone.{k}": v for net in NETWORKS for k, v in bb.items()}
    state["_backbone_only"] = torch.ones(())                 # DINO.adapt_state_dict keeps the fresh heads
    args = {"img_size": vit.model_args["img_size"]} if "img_size" in vit.model_args else {}
    log.info("%s: a DINO backbone without its head; the projection heads of %s are fresh", path, name)
    return Checkpoint(name, args, state, {"source_format": "dino_backbone"}, interpolation="bicubic", antialias=True)


# before the generic timm reader (a full checkpoint is a .pth too, but no flat state dict)
FORMATS.insert(1, Format("dino", is_full_dino_checkpoint, read_full_dino,
                         "a DINO training checkpoint (main_dino.py: student, teacher, dino_loss)"))
register_timm_family(TimmFamily("dino_", detect=lambda sd: False, read=read_dino_backbone))
