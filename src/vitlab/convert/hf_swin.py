"""HF transformers Swin directories (SwinForImageClassification / SwinModel) <-> vitlab swin_*.

transformers keeps the original layout: the patch merging that halves the grid ends stage i
(`encoder.layers.{i}.downsample`), ours starts stage i + 1 (`layers.{i+1}.downsample`), timm's layout. q/k/v are
separate Linears there, fused here. On disk (what save_pretrained writes, and the hub holds) the names are the old
ones (`attention.self.query`); transformers >= 5 uses `attention.q_proj` in memory: both are read.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..errors import VitlabError
from ..imagenet import IMAGENET_MEAN, IMAGENET_STD
from . import Checkpoint
from ._keymap import KeyTable, fuse_qkv, rename, rename_or_raise, split_qkv
from .hf import HFArchitecture, HFConfig, _hf_classes, register_hf_architecture

_BLOCK = "encoder.layers.{i}.blocks.{j}"
_OURS = "layers.{i}.blocks.{j}"
# Below the `swin.` prefix, on-disk names. `_merge.{i}` is the merging after HF stage i, renumbered by _shift_merging.
HF_SWIN_KEYS: KeyTable = [
    ("embeddings.patch_embeddings.projection.{p}", "patch_embed.proj.{p}"),
    ("embeddings.norm.{p}", "patch_norm.{p}"),
    (f"{_BLOCK}.layernorm_before.{{p}}", f"{_OURS}.norm1.{{p}}"),
    (f"{_BLOCK}.attention.self.query.{{p}}", f"{_OURS}.attn.q.{{p}}"),
    (f"{_BLOCK}.attention.self.key.{{p}}", f"{_OURS}.attn.k.{{p}}"),
    (f"{_BLOCK}.attention.self.value.{{p}}", f"{_OURS}.attn.v.{{p}}"),
    (f"{_BLOCK}.attention.self.relative_position_bias_table", f"{_OURS}.attn.relative_position_bias_table"),
    (f"{_BLOCK}.attention.output.dense.{{p}}", f"{_OURS}.attn.proj.{{p}}"),
    (f"{_BLOCK}.layernorm_after.{{p}}", f"{_OURS}.norm2.{{p}}"),
    (f"{_BLOCK}.intermediate.dense.{{p}}", f"{_OURS}.mlp.fc1.{{p}}"),
    (f"{_BLOCK}.output.dense.{{p}}", f"{_OURS}.mlp.fc2.{{p}}"),
    ("encoder.layers.{i}.downsample.{m}.{p}", "_merge.{i}.{m}.{p}"),
    ("layernorm.{p}", "norm.{p}"),
]
# transformers >= 5 in-memory names, accepted when reading.
HF5_SWIN_KEYS: KeyTable = [
    (f"{_BLOCK}.attention.q_proj.{{p}}", f"{_OURS}.attn.q.{{p}}"),
    (f"{_BLOCK}.attention.k_proj.{{p}}", f"{_OURS}.attn.k.{{p}}"),
    (f"{_BLOCK}.attention.v_proj.{{p}}", f"{_OURS}.attn.v.{{p}}"),
    (f"{_BLOCK}.attention.o_proj.{{p}}", f"{_OURS}.attn.proj.{{p}}"),
    (f"{_BLOCK}.attention.relative_position_bias.relative_position_bias_table",
     f"{_OURS}.attn.relative_position_bias_table"),
    (f"{_BLOCK}.mlp.fc1.{{p}}", f"{_OURS}.mlp.fc1.{{p}}"),
    (f"{_BLOCK}.mlp.fc2.{{p}}", f"{_OURS}.mlp.fc2.{{p}}"),
]
HF_SWIN_HEAD_KEYS: KeyTable = [("classifier.{p}", "head.{p}")]
SWIN_SIZES = {(96, (2, 2, 6, 2)): "swin_tiny_patch4_window7_224", (96, (2, 2, 18, 2)): "swin_small_patch4_window7_224",
              (128, (2, 2, 18, 2)): "swin_base_patch4_window7_224"}


def shift_merging(sd: dict[str, Tensor], step: int) -> dict[str, Tensor]:
    """Move patch-merging weights between layouts: `_merge.{i}` <-> `layers.{i+1}.downsample` (step=+1 reads the
    original/HF layout into ours, step=-1 writes ours back)."""
    out = {}
    for k, v in sd.items():
        if step > 0 and (m := re.match(r"_merge\.(\d+)\.(.*)\Z", k)):
            k = f"layers.{int(m.group(1)) + 1}.downsample.{m.group(2)}"
        elif step < 0 and (m := re.match(r"layers\.(\d+)\.downsample\.(.*)\Z", k)):
            k = f"_merge.{int(m.group(1)) - 1}.{m.group(2)}"
        out[k] = v
    return out


def swin_from_hf(config: HFConfig, weights: dict[str, Tensor], path: Path) -> Checkpoint:
    """SwinForImageClassification / SwinModel directory -> vitlab swin_* Checkpoint."""
    if config.get("use_absolute_embeddings"):
        raise VitlabError(f"{path}: Swin with absolute position embeddings is not supported")
    if config.get("hidden_act", "gelu") != "gelu":
        raise VitlabError(f"{path}: hidden_act {config['hidden_act']!r} is not supported (exact GELU only)")
    weights = {k: v for k, v in weights.items() if not k.endswith("relative_position_index")}  # a buffer, rebuilt
    sd = rename_or_raise(weights, HF_SWIN_KEYS + HF5_SWIN_KEYS, prefix="swin", head_table=HF_SWIN_HEAD_KEYS,
                         what=f"{path}: weights this Swin converter does not know")
    sd = fuse_qkv(shift_merging(sd, +1))
    img = config.get("image_size", 224)
    patch = config.get("patch_size", 4)
    img = int(img[0]) if isinstance(img, (list, tuple)) and img[0] == img[1] else img
    patch = int(patch[0]) if isinstance(patch, (list, tuple)) else int(patch)
    args: dict[str, Any] = {
        "img_size": img, "patch_size": patch, "in_chans": int(config.get("num_channels", 3)),
        "embed_dim": int(config.get("embed_dim", 96)), "depths": list(config.get("depths", (2, 2, 6, 2))),
        "num_heads": list(config.get("num_heads", (3, 6, 12, 24))), "window_size": int(config.get("window_size", 7)),
        "mlp_ratio": float(config.get("mlp_ratio", 4.0)), "qkv_bias": bool(config.get("qkv_bias", True)),
        "norm_eps": float(config.get("layer_norm_eps", 1e-5)),
        "drop_path_rate": float(config.get("drop_path_rate", 0.1)),
        "num_classes": sd["head.weight"].shape[0] if "head.weight" in sd else 0}
    pre = config.get("_preprocessor", {})
    mean, std = pre.get("image_mean", IMAGENET_MEAN), pre.get("image_std", IMAGENET_STD)
    args["mean"], args["std"] = [float(x) for x in mean], [float(x) for x in std]
    meta: dict[str, Any] = {"source_format": "hf", "mean": args["mean"], "std": args["std"]}
    if classes := _hf_classes(config):
        meta["classes"] = classes
    name = SWIN_SIZES.get((args["embed_dim"], tuple(args["depths"])), "swin_tiny_patch4_window7_224")
    return Checkpoint(name, args, sd, meta, interpolation="bicubic", antialias=False)


def can_write_swin(model: nn.Module) -> bool:
    from ..models.swin import SwinTransformer

    return isinstance(model, SwinTransformer)


def swin_to_hf(model: nn.Module) -> tuple[HFConfig, dict[str, Tensor], HFConfig]:
    """A vitlab Swin as transformers' SwinForImageClassification (or SwinModel without a head)."""
    c = model.cfg
    sd = shift_merging(split_qkv(dict(model.state_dict())), -1)
    heads = {k: sd.pop(k) for k in list(sd) if k.startswith("head.")}
    body, unknown = rename(sd, HF_SWIN_KEYS, reverse=True)
    head_sd, unknown_heads = rename(heads, HF_SWIN_HEAD_KEYS, reverse=True)
    if unknown or unknown_heads:
        raise VitlabError(f"{getattr(model, 'vitlab_name', 'model')}: no transformers name for "
                          f"{', '.join(unknown + unknown_heads)}")
    base = "" if c.num_classes == 0 else "swin."
    weights = {base + k: v for k, v in body.items()} | head_sd
    img = c.img_size if isinstance(c.img_size, int) else list(c.img_size)
    classes = getattr(model, "vitlab_meta", {}).get("classes") or [f"LABEL_{i}" for i in range(c.num_classes)]
    config: HFConfig = {
        "architectures": ["SwinForImageClassification" if c.num_classes else "SwinModel"], "model_type": "swin",
        "image_size": img, "patch_size": c.patch_size, "num_channels": c.in_chans, "embed_dim": c.embed_dim,
        "depths": list(c.depths), "num_heads": list(c.num_heads), "window_size": c.window_size,
        "mlp_ratio": c.mlp_ratio, "qkv_bias": c.qkv_bias, "hidden_act": "gelu", "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0, "drop_path_rate": c.drop_path_rate, "use_absolute_embeddings": False,
        "layer_norm_eps": c.norm_eps, "encoder_stride": 32,
        "id2label": {str(i): label for i, label in enumerate(classes)},
        "label2id": {label: i for i, label in enumerate(classes)},
    }
    side = [img, img] if isinstance(img, int) else img
    preprocessor: HFConfig = {
        "image_processor_type": "ViTImageProcessor", "do_resize": True, "size": {"height": side[0], "width": side[1]},
        "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": list(c.mean), "image_std": list(c.std),
    }
    return config, weights, preprocessor


register_hf_architecture(HFArchitecture("swin", swin_from_hf, swin_to_hf, can_write_swin))
