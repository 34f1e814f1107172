"""HF transformers directories (config.json + model.safetensors / pytorch_model.bin, sharded or not).

Weights are read with the names they have on disk. transformers 5 renamed ViT's modules in memory
(`vit.layers.N.attention.q_proj`) but still writes the old names (`vit.encoder.layer.N.attention.attention.query`)
when saving; we read both, and write the on-disk names.

Each architecture family is one `HFArchitecture` registered under its config.json `model_type`; a model family
adds its own from its own file:

    from vitlab.convert.hf import HFArchitecture, register_hf_architecture
    register_hf_architecture(HFArchitecture("swin", read=read_swin, write=write_swin, can_write=is_swin))

`read(config, weights, directory)` turns the on-disk state dict into a Checkpoint; `write(model)` returns
(config.json dict, on-disk state dict, preprocessor_config.json dict) for `--to hf`.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..errors import VitlabError
from ..imagenet import IMAGENET_MEAN, IMAGENET_STD
from . import Checkpoint, Format, register_format
from ._keymap import KeyTable, fuse_qkv, rename, rename_or_raise, split_qkv
from ._vit import vit_checkpoint
from .safe_load import load_safetensors, load_torch

log = logging.getLogger(__name__)

HFConfig = dict[str, Any]


@dataclass
class HFArchitecture:
    model_type: str                                                   # config.json "model_type"
    read: Callable[[HFConfig, dict[str, Tensor], Path], Checkpoint]   # on-disk weights -> vitlab Checkpoint
    write: Callable[[nn.Module], tuple[HFConfig, dict[str, Tensor], HFConfig]] | None = None
    can_write: Callable[[nn.Module], bool] | None = None              # does `write` handle this vitlab model?
    write_files: Callable[[nn.Module, Path], list[Path]] | None = None   # further files (a CLIP's tokenizer)


HF_ARCHITECTURES: dict[str, HFArchitecture] = {}


def register_hf_architecture(arch: HFArchitecture) -> HFArchitecture:
    HF_ARCHITECTURES[arch.model_type] = arch
    return arch


def hf_architecture_for(model: nn.Module) -> HFArchitecture:
    """The registered architecture that can export `model` to transformers."""
    from . import _load_format_modules   # families register from their own files (hf_swin, hf_convnets, ...)

    _load_format_modules()
    for arch in HF_ARCHITECTURES.values():
        if arch.write is not None and arch.can_write is not None and arch.can_write(model):
            return arch
    name = getattr(model, "vitlab_name", type(model).__name__)
    raise VitlabError(f"{name}: no HF transformers equivalent to export to (supported: "
                      f"{', '.join(sorted(a.model_type for a in HF_ARCHITECTURES.values() if a.write))})")


# --- reading a directory -----------------------------------------------------------------------------------------
CONFIG = "config.json"
PREPROCESSOR = "preprocessor_config.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def is_hf_dir(path: Path) -> bool:
    if not path.is_dir() or not (path / CONFIG).is_file():
        return False
    try:
        cfg = json.loads((path / CONFIG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(cfg, dict) and cfg.get("format") != "vitlab" and ("model_type" in cfg or "architectures" in cfg)


def read_hf_weights(directory: Path, trust_pickle: bool = False) -> dict[str, Tensor]:
    """All weights of an HF directory, shards merged; safetensors preferred over pickles."""
    for name in WEIGHT_FILES:
        path = directory / name
        if not path.is_file():
            continue
        if name.endswith(".index.json"):
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
            sd: dict[str, Tensor] = {}
            for shard in shards:
                sd.update(_read_one(directory / shard, trust_pickle))
            return sd
        return _read_one(path, trust_pickle)
    others = sorted(p.name for p in directory.iterdir() if p.suffix in (".h5", ".msgpack", ".ckpt"))
    hint = f" (found {', '.join(others)}: TensorFlow/Flax weights; load them in transformers and save_pretrained " \
           f"to get safetensors)" if others else ""
    raise VitlabError(f"{directory}: no model.safetensors or pytorch_model.bin{hint}")


def _read_one(path: Path, trust_pickle: bool) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    obj = load_torch(path, trust_pickle)
    return {k: v for k, v in obj.items() if isinstance(v, Tensor)}


def read_hf(path: Path, trust_pickle: bool = False, **_: Any) -> Checkpoint:
    config = json.loads((path / CONFIG).read_text())
    model_type = config.get("model_type")
    arch = HF_ARCHITECTURES.get(model_type)
    if arch is None:
        supported = ", ".join(sorted(HF_ARCHITECTURES))
        raise VitlabError(f"{path}: HF model_type {model_type!r} is not supported (supported: {supported})")
    if (path / PREPROCESSOR).is_file():
        config["_preprocessor"] = json.loads((path / PREPROCESSOR).read_text())
    return arch.read(config, read_hf_weights(path, trust_pickle), path)


register_format(Format("hf", is_hf_dir, read_hf,
                       "an HF transformers directory (config.json + model.safetensors or pytorch_model.bin)"))


# --- ViT and DeiT ------------------------------------------------------------------------------------------------
# transformers' on-disk names below the base-model prefix (`vit.` / `deit.`), against ours. q/k/v go to
# intermediate names `attn.q/k/v` that fuse_qkv concatenates into our `attn.qkv`.
HF_VIT_KEYS: KeyTable = [
    ("embeddings.cls_token", "cls_token"),
    ("embeddings.distillation_token", "dist_token"),
    ("embeddings.position_embeddings", "pos_embed"),
    ("embeddings.patch_embeddings.projection.{p}", "patch_embed.proj.{p}"),
    ("encoder.layer.{i}.layernorm_before.{p}", "blocks.{i}.norm1.{p}"),
    ("encoder.layer.{i}.attention.attention.query.{p}", "blocks.{i}.attn.q.{p}"),
    ("encoder.layer.{i}.attention.attention.key.{p}", "blocks.{i}.attn.k.{p}"),
    ("encoder.layer.{i}.attention.attention.value.{p}", "blocks.{i}.attn.v.{p}"),
    ("encoder.layer.{i}.attention.output.dense.{p}", "blocks.{i}.attn.proj.{p}"),
    ("encoder.layer.{i}.layernorm_after.{p}", "blocks.{i}.norm2.{p}"),
    ("encoder.layer.{i}.intermediate.dense.{p}", "blocks.{i}.mlp.fc1.{p}"),
    ("encoder.layer.{i}.output.dense.{p}", "blocks.{i}.mlp.fc2.{p}"),
    ("layernorm.{p}", "norm.{p}"),
    ("pooler.dense.{p}", "pre_logits.fc.{p}"),
]
# transformers >= 5 in-memory names (what `model.state_dict()` gives there), accepted when reading.
HF5_VIT_KEYS: KeyTable = [
    ("layers.{i}.layernorm_before.{p}", "blocks.{i}.norm1.{p}"),
    ("layers.{i}.attention.q_proj.{p}", "blocks.{i}.attn.q.{p}"),
    ("layers.{i}.attention.k_proj.{p}", "blocks.{i}.attn.k.{p}"),
    ("layers.{i}.attention.v_proj.{p}", "blocks.{i}.attn.v.{p}"),
    ("layers.{i}.attention.o_proj.{p}", "blocks.{i}.attn.proj.{p}"),
    ("layers.{i}.layernorm_after.{p}", "blocks.{i}.norm2.{p}"),
    ("layers.{i}.mlp.fc1.{p}", "blocks.{i}.mlp.fc1.{p}"),
    ("layers.{i}.mlp.fc2.{p}", "blocks.{i}.mlp.fc2.{p}"),
]
# Classifier heads sit outside the base model. DeiTForImageClassificationWithTeacher has two.
HF_VIT_HEAD_KEYS: KeyTable = [("classifier.{p}", "head.{p}")]
HF_DEIT_TEACHER_HEAD_KEYS: KeyTable = [("cls_classifier.{p}", "head.{p}"),
                                       ("distillation_classifier.{p}", "head_dist.{p}")]

DEFAULT_NORMALISATION = {"vit": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), "deit": (IMAGENET_MEAN, IMAGENET_STD)}


def vit_from_hf(config: HFConfig, weights: dict[str, Tensor], path: Path) -> Checkpoint:
    """ViTModel / ViTForImageClassification / DeiT* (incl. WithTeacher) -> vitlab vit_* / deit_*."""
    model_type = config["model_type"]
    if config.get("hidden_act", "gelu") != "gelu":
        raise VitlabError(f"{path}: hidden_act {config['hidden_act']!r} is not supported (exact GELU only)")
    if config.get("pooler_act", "tanh") != "tanh":
        raise VitlabError(f"{path}: pooler_act {config['pooler_act']!r} is not supported (tanh only)")
    sd = vitlab_names_from_hf(weights, model_type, path)
    patch = config.get("patch_size", 16)
    if isinstance(patch, (list, tuple)) and patch[0] != patch[1]:
        raise VitlabError(f"{path}: non-square patches {patch} are not supported")
    img = config.get("image_size", 224)
    if isinstance(img, (list, tuple)):
        img = int(img[0]) if img[0] == img[1] else (int(img[0]), int(img[1]))
    mean, std = DEFAULT_NORMALISATION[model_type]
    pre = config.get("_preprocessor", {})
    if "image_mean" in pre and "image_std" in pre:
        mean, std = pre["image_mean"], pre["image_std"]
    return vit_checkpoint(
        sd, family=model_type, source="hf", num_heads=int(config["num_attention_heads"]), img_size=img,
        norm_eps=float(config.get("layer_norm_eps", 1e-12)), mean=mean, std=std, classes=_hf_classes(config),
        interpolation="bicubic", antialias=False)   # HF's interpolate_pos_encoding: bicubic, no antialias


def vitlab_names_from_hf(weights: dict[str, Tensor], model_type: str, path: Path | str = "checkpoint"
                         ) -> dict[str, Tensor]:
    """On-disk (or transformers-5 in-memory) HF ViT/DeiT names -> vitlab names, q/k/v fused."""
    teacher = any(k.startswith("distillation_classifier.") for k in weights)
    return fuse_qkv(rename_or_raise(weights, HF_VIT_KEYS + HF5_VIT_KEYS, prefix=model_type,
                                    head_table=HF_DEIT_TEACHER_HEAD_KEYS if teacher else HF_VIT_HEAD_KEYS,
                                    what=f"{path}: weights this ViT/DeiT converter does not know"))


def _hf_classes(config: HFConfig) -> list[str] | None:
    id2label = config.get("id2label") or {}
    labels = [id2label.get(str(i), id2label.get(i)) for i in range(len(id2label))]
    if not labels or any(x is None for x in labels) or all(x == f"LABEL_{i}" for i, x in enumerate(labels)):
        return None                                    # transformers' placeholder names say nothing
    return [str(x) for x in labels]


def can_write_vit(model: nn.Module) -> bool:
    from ..models.vit import VisionTransformer

    return isinstance(model, VisionTransformer) and type(model).__name__ in ("VisionTransformer", "DeiT")


def vit_to_hf(model: nn.Module) -> tuple[HFConfig, dict[str, Tensor], HFConfig]:
    """A vitlab ViT/DeiT as transformers' ViTForImageClassification / ViTModel / DeiT* (config, weights, preprocessor).

    Distilled DeiT -> DeiTForImageClassificationWithTeacher (two heads) or DeiTForImageClassification (one head);
    everything else -> ViT. Settings transformers' ViT cannot express are refused rather than approximated.
    """
    c = model.cfg
    name = getattr(model, "vitlab_name", "model")
    problems = [msg for bad, msg in [
        (c.pos_embed != "learned", f"pos_embed={c.pos_embed!r}"), (not c.class_token, "no class token"),
        (c.pool != "cls", f"pool={c.pool!r}"), (c.representation_size and c.num_classes, "pre-logits layer + head"),
    ] if bad]
    if problems:
        raise VitlabError(f"{name}: transformers' ViT has no equivalent of {', '.join(problems)}")
    distilled = bool(getattr(c, "distilled", False))
    model_type = "deit" if distilled else "vit"
    if c.num_classes == 0:
        cls = "DeiTModel" if distilled else "ViTModel"
        if not c.representation_size:
            log.warning("%s has no head: exported as %s, whose pooler transformers will initialise randomly", name, cls)
    elif distilled:
        cls = "DeiTForImageClassificationWithTeacher" if model.head_dist is not None else "DeiTForImageClassification"
    else:
        cls = "ViTForImageClassification"
    sd = {k: v for k, v in model.state_dict().items()}
    heads = {k: sd.pop(k) for k in list(sd) if k.split(".")[0] in ("head", "head_dist")}
    body, unknown = rename(split_qkv(sd), HF_VIT_KEYS, reverse=True)
    head_table = HF_DEIT_TEACHER_HEAD_KEYS if cls.endswith("WithTeacher") else HF_VIT_HEAD_KEYS
    head_sd, unknown_heads = rename(heads, head_table, reverse=True)
    if unknown or unknown_heads:
        raise VitlabError(f"{name}: no transformers name for {', '.join(unknown + unknown_heads)}")
    base = "" if c.num_classes == 0 else f"{model_type}."       # ViTModel/DeiTModel save without the prefix
    weights = {base + k: v for k, v in body.items()} | head_sd
    img = list(c.img_size) if isinstance(c.img_size, (list, tuple)) and c.img_size[0] != c.img_size[1] else (
        c.img_size if isinstance(c.img_size, int) else int(c.img_size[0]))
    classes = getattr(model, "vitlab_meta", {}).get("classes") or [f"LABEL_{i}" for i in range(c.num_classes)]
    config: HFConfig = {
        "architectures": [cls], "model_type": model_type,
        "hidden_size": c.dim, "num_hidden_layers": c.depth, "num_attention_heads": c.num_heads,
        "intermediate_size": int(c.dim * c.mlp_ratio), "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "initializer_range": 0.02,
        "layer_norm_eps": c.norm_eps, "image_size": img, "patch_size": c.patch_size, "num_channels": c.in_chans,
        "qkv_bias": c.qkv_bias, "encoder_stride": c.patch_size,
        "pooler_output_size": c.representation_size or c.dim, "pooler_act": "tanh",
        "id2label": {str(i): label for i, label in enumerate(classes)},
        "label2id": {label: i for i, label in enumerate(classes)},
    }
    size = [img, img] if isinstance(img, int) else img
    preprocessor: HFConfig = {
        "image_processor_type": "DeiTImageProcessor" if distilled else "ViTImageProcessor",
        "do_resize": True, "size": {"height": size[0], "width": size[1]}, "resample": 3 if distilled else 2,
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": list(c.mean), "image_std": list(c.std),
    }
    return config, weights, preprocessor


register_hf_architecture(HFArchitecture("vit", vit_from_hf, vit_to_hf, can_write_vit))
register_hf_architecture(HFArchitecture("deit", vit_from_hf))
