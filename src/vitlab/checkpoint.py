"""vitlab checkpoint directories: config.json (model name + constructor arguments + class names) + model.safetensors.

    save_model(model, dir, classes=...)   -> writes both files atomically
    load_model(path, num_classes=, img_size=) -> nn.Module rebuilt from config.json, weights loaded
    convert_checkpoint(src, dst, to="vitlab") -> `vitlab convert`: read any supported format, write vitlab or HF

Foreign formats (HF transformers, timm, Google .npz) are read by vitlab.convert and arrive here as a vitlab state
dict. Loading adapts a checkpoint to the requested model: a fresh head when num_classes differs (with a notice),
resampled position embeddings when img_size differs (the model's `adapt_state_dict`).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from .checkpoint_files import (CONFIG_NAME, FORMAT_VERSION, WEIGHTS_NAME, is_vitlab_dir, read_config, read_weights,
                               save_weights)
from .convert import read_checkpoint
from .convert._keymap import group_keys
from .convert.export_hf import save_hf
from .errors import VitlabError
from .io import write_json
from .variants import build_model

log = logging.getLogger(__name__)

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "convert_checkpoint", "group_keys", "is_vitlab_dir", "load_model",
           "load_weights", "model_config", "read_config", "read_weights", "save_model", "save_weights"]
CONVERT_TARGETS = ("vitlab", "hf")


def model_config(model: nn.Module, classes: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    """The config.json content that rebuilds `model` through create_model."""
    name = getattr(model, "vitlab_name", None)
    if name is None:
        raise ValueError("model was not built by vitlab.create_model: its name is unknown")
    cfg = getattr(model, "cfg", None)
    out: dict[str, Any] = {"format": "vitlab", "format_version": FORMAT_VERSION, "model": name,
                           "model_args": _jsonable(dict(getattr(model, "vitlab_args", {})))}
    if cfg is not None and hasattr(cfg, "mean"):
        out["mean"], out["std"] = list(cfg.mean), list(cfg.std)
    if classes is not None:
        out["classes"] = list(classes)
    out.update(extra)
    return out


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def save_model(model: nn.Module, directory: str | Path, classes: list[str] | None = None,
               metadata: dict[str, str] | None = None, **extra: Any) -> Path:
    """Save config.json + model.safetensors into `directory` (created if needed). Returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_weights(model.state_dict(), directory / WEIGHTS_NAME, metadata)
    write_json(directory / CONFIG_NAME, model_config(model, classes, **extra))
    return directory


def load_model(path: str | Path, *, name: str | None = None, num_classes: int | None = None,
               img_size: int | tuple[int, int] | None = None, trust_pickle: bool = False,
               **overrides: Any) -> nn.Module:
    """Rebuild a model from a checkpoint (a vitlab directory, or any format vitlab.convert reads).

    `name` may override the architecture recorded in the checkpoint (it must be compatible); num_classes and
    img_size adapt it for fine-tuning. The model comes back in eval mode with `model.vitlab_meta` holding the
    checkpoint's config (class names, normalisation). `trust_pickle` allows full unpickling of a .pth/.bin
    (off by default: such files can run code).
    """
    # num_heads: formats whose weights do not record the head count (MONAI UNETR) take it from the caller
    ckpt = read_checkpoint(path, trust_pickle=trust_pickle, model=name, img_size=img_size,
                           num_heads=overrides.get("num_heads"))
    model_name = name or ckpt.model
    args = {**ckpt.model_args, **overrides}
    classes = ckpt.meta.get("classes")
    src_classes = args.get("num_classes")
    if num_classes is not None:
        args["num_classes"] = num_classes
    if img_size is not None:
        args["img_size"] = img_size
    model = build_model(model_name, **args)
    state_dict = ckpt.state_dict
    if img_size is not None and "_grid_size" not in state_dict:
        # The source grid may be non-square: read it off the source model (meta device, no memory).
        with torch.device("meta"):
            source = build_model(model_name, **{**ckpt.model_args, **overrides})
        if isinstance(getattr(source, "pos_embed", None), nn.Parameter) and hasattr(source, "grid_size"):
            state_dict = {**state_dict, "_grid_size": tuple(source.grid_size)}
    load_weights(model, state_dict, interpolation=ckpt.interpolation, antialias=ckpt.antialias)
    if num_classes is not None and src_classes is not None and num_classes != src_classes:
        classes = None
    model.vitlab_meta = {k: v for k, v in ckpt.meta.items() if k != "classes"} | ({"classes": classes} if classes
                                                                                   else {})
    if model.vitlab_meta.get("task_extras"):     # e.g. a translation model's tokenizer (Task.restore_extras)
        from .tasks import restore_task_extras

        restore_task_extras(model)
    return model.eval()


def convert_checkpoint(src: str | Path, dst: str | Path, *, to: str = "vitlab", model: str | None = None,
                       num_classes: int | None = None, img_size: int | None = None,
                       trust_pickle: bool = False, num_heads: int | None = None) -> nn.Module:
    """Read `src` (format detected), adapt it (num_classes / img_size), write `dst` as a vitlab or HF directory.

    Returns the converted model (eval mode). The written files are always safetensors, whatever `src` was.
    """
    if to not in CONVERT_TARGETS:
        raise VitlabError(f"--to must be one of {', '.join(CONVERT_TARGETS)}, got {to!r}")
    if Path(dst).resolve() == Path(src).resolve():
        raise VitlabError(f"{dst}: the destination is the source")
    heads = {"num_heads": num_heads} if num_heads is not None else {}   # weights without a head count (MONAI)
    net = load_model(src, name=model, num_classes=num_classes, img_size=img_size, trust_pickle=trust_pickle, **heads)
    meta: dict[str, Any] = getattr(net, "vitlab_meta", {})
    if to == "hf":
        save_hf(net, dst)
    else:
        extra = {k: v for k, v in meta.items() if k in ("source_format", "task_extras")}  # e.g. a tokenizer
        save_model(net, dst, classes=meta.get("classes"), **extra)
    log.debug("wrote %s (%s) from %s", dst, to, src)
    return net


def load_weights(model: nn.Module, state_dict: dict[str, Tensor], *, interpolation: str = "bicubic",
                 antialias: bool = False) -> list[str]:
    """Load a vitlab state dict into `model`, adapting what may differ and refusing what may not.

    Head weights of another shape are left fresh (fine-tuning to new classes) with one logged notice; the
    model's `adapt_state_dict` resamples position embeddings and the like. Any other missing, unexpected or
    mis-shaped key raises VitlabError listing them grouped. Returns the keys left at their initial values.
    """
    if hasattr(model, "adapt_state_dict"):
        state_dict = model.adapt_state_dict(dict(state_dict), mode=interpolation, antialias=antialias)
    own = model.state_dict()
    head_keys = {k for k in own if _is_head_key(k)}
    fresh = [k for k in head_keys if k in state_dict and state_dict[k].shape != own[k].shape]
    fresh += [k for k in head_keys if k not in state_dict]
    sd = {k: v for k, v in state_dict.items() if k not in fresh}
    missing = [k for k in own if k not in sd and k not in fresh]
    unexpected = [k for k in sd if k not in own]
    mismatched = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in sd
                  if k in own and sd[k].shape != own[k].shape]
    # A checkpoint without a head loads into a model with one (and vice versa) as a fresh / dropped head.
    unexpected_heads = [k for k in unexpected if _is_head_key(k)]
    unexpected = [k for k in unexpected if not _is_head_key(k)]
    if missing or unexpected or mismatched:
        raise VitlabError("checkpoint does not fit the model: " + "; ".join(
            f"{label}: {group_keys(keys)}" for label, keys in
            (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)) if keys))
    sd = {k: v for k, v in sd.items() if k in own}
    with torch.no_grad():
        model.load_state_dict({**own, **{k: v.to(own[k].dtype) for k, v in sd.items()}}, strict=True)
    if fresh or unexpected_heads:
        log.warning("new classifier head (not loaded from the checkpoint): %s", group_keys(sorted(fresh)))
    return sorted(fresh)


def _is_head_key(key: str) -> bool:
    return key.split(".")[0] in ("head", "head_dist", "fc", "classifier")
