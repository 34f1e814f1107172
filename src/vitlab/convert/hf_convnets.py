"""HF transformers directories of ResNet, CvT and ConvNeXt <-> vitlab resnet*, cvt_*, convnext_* (read, and
written by `vitlab convert --to hf`).

Names below are the on-disk ones (what save_pretrained writes and the hub holds; transformers 5 keeps them in
memory too for these three). Settings our models do not have are refused with the setting's name rather than
approximated.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..errors import VitlabError
from ..imagenet import IMAGENET_MEAN, IMAGENET_STD
from . import Checkpoint
from ._keymap import KeyTable, fuse_qkv, rename, rename_or_raise, split_qkv
from .hf import HFArchitecture, HFConfig, _hf_classes, register_hf_architecture

MAX_STAGES = 8          # key tables are written out per stage: HF counts stages from 0, torchvision from layer1


# --- ResNet ------------------------------------------------------------------------------------------------------
def _resnet_stage_keys(s: int) -> KeyTable:
    hf, ours = f"encoder.stages.{s}.layers.{{j}}", f"layer{s + 1}.{{j}}"
    return [
        (f"{hf}.shortcut.convolution.weight", f"{ours}.downsample.0.weight"),
        (f"{hf}.shortcut.normalization.{{p}}", f"{ours}.downsample.1.{{p}}"),
        (f"{hf}.layer.0.convolution.weight", f"{ours}.conv1.weight"),
        (f"{hf}.layer.0.normalization.{{p}}", f"{ours}.bn1.{{p}}"),
        (f"{hf}.layer.1.convolution.weight", f"{ours}.conv2.weight"),
        (f"{hf}.layer.1.normalization.{{p}}", f"{ours}.bn2.{{p}}"),
        (f"{hf}.layer.2.convolution.weight", f"{ours}.conv3.weight"),     # bottleneck only
        (f"{hf}.layer.2.normalization.{{p}}", f"{ours}.bn3.{{p}}"),
    ]


# Below the `resnet.` prefix; {p} is weight / bias / running_mean / running_var / num_batches_tracked.
HF_RESNET_KEYS: KeyTable = [
    ("embedder.embedder.convolution.weight", "conv1.weight"),
    ("embedder.embedder.normalization.{p}", "bn1.{p}"),
] + [row for s in range(MAX_STAGES) for row in _resnet_stage_keys(s)]
HF_RESNET_HEAD_KEYS: KeyTable = [("classifier.1.{p}", "fc.{p}")]
RESNET_NAMES = {("basic", (2, 2, 2, 2)): "resnet18", ("basic", (3, 4, 6, 3)): "resnet34",
                ("bottleneck", (3, 4, 6, 3)): "resnet50", ("bottleneck", (3, 4, 23, 3)): "resnet101",
                ("bottleneck", (3, 8, 36, 3)): "resnet152"}


def resnet_from_hf(config: HFConfig, weights: dict[str, Tensor], path: Path) -> Checkpoint:
    """ResNetForImageClassification / ResNetModel directory -> vitlab resnet* Checkpoint."""
    _refuse(path, [(config.get("hidden_act", "relu") != "relu", f"hidden_act {config.get('hidden_act')!r}"),
                   (config.get("downsample_in_first_stage", False), "downsample_in_first_stage"),
                   (config.get("downsample_in_bottleneck", False), "downsample_in_bottleneck (ResNet v1 strides)")])
    sd = fuse_qkv(rename_or_raise(weights, HF_RESNET_KEYS, prefix="resnet", head_table=HF_RESNET_HEAD_KEYS,
                                  what=f"{path}: weights this ResNet converter does not know"))
    block = config.get("layer_type", "bottleneck")
    sizes = [int(x) for x in config.get("hidden_sizes", (256, 512, 1024, 2048))]
    args: dict[str, Any] = dict(
        block=block, layers=[int(d) for d in config.get("depths", (3, 4, 6, 3))],
        widths=[s // 4 for s in sizes] if block == "bottleneck" else sizes,   # HF counts a bottleneck's output
        stem_width=int(config.get("embedding_size", 64)), in_chans=int(config.get("num_channels", 3)),
        num_classes=sd["fc.weight"].shape[0] if "fc.weight" in sd else 0)
    name = RESNET_NAMES.get((block, tuple(args["layers"])), "resnet50" if block == "bottleneck" else "resnet18")
    return _checkpoint(name, args, sd, config)


# --- CvT ---------------------------------------------------------------------------------------------------------
_CVT_BLOCK, _OUR_BLOCK = "encoder.stages.{i}.layers.{j}", "stages.{i}.blocks.{j}"
_CVT_ATTN = f"{_CVT_BLOCK}.attention.attention"
HF_CVT_KEYS: KeyTable = [
    ("encoder.stages.{i}.embedding.convolution_embeddings.projection.{p}", "stages.{i}.patch_embed.proj.{p}"),
    ("encoder.stages.{i}.embedding.convolution_embeddings.normalization.{p}", "stages.{i}.patch_embed.norm.{p}"),
    ("encoder.stages.{i}.cls_token", "stages.{i}.cls_token"),
    (f"{_CVT_BLOCK}.layernorm_before.{{p}}", f"{_OUR_BLOCK}.norm1.{{p}}"),
] + [row for hf, ours in (("query", "q"), ("key", "k"), ("value", "v")) for row in [
    (f"{_CVT_ATTN}.convolution_projection_{hf}.convolution_projection.convolution.weight",
     f"{_OUR_BLOCK}.attn.conv_proj_{ours}.conv.weight"),
    (f"{_CVT_ATTN}.convolution_projection_{hf}.convolution_projection.normalization.{{p}}",
     f"{_OUR_BLOCK}.attn.conv_proj_{ours}.bn.{{p}}"),
    (f"{_CVT_ATTN}.projection_{hf}.{{p}}", f"{_OUR_BLOCK}.attn.{ours}.{{p}}"),   # fused into attn.qkv below
]] + [
    (f"{_CVT_BLOCK}.attention.output.dense.{{p}}", f"{_OUR_BLOCK}.attn.proj.{{p}}"),
    (f"{_CVT_BLOCK}.layernorm_after.{{p}}", f"{_OUR_BLOCK}.norm2.{{p}}"),
    (f"{_CVT_BLOCK}.intermediate.dense.{{p}}", f"{_OUR_BLOCK}.mlp.fc1.{{p}}"),
    (f"{_CVT_BLOCK}.output.dense.{{p}}", f"{_OUR_BLOCK}.mlp.fc2.{{p}}"),
]
# The final LayerNorm sits beside the classifier in CvtForImageClassification, outside the `cvt.` prefix.
HF_CVT_HEAD_KEYS: KeyTable = [("layernorm.{p}", "norm.{p}"), ("classifier.{p}", "head.{p}")]
CVT_NAMES = {((64, 192, 384), (1, 2, 10)): "cvt_13_224", ((64, 192, 384), (1, 4, 16)): "cvt_21_224",
             ((192, 768, 1024), (2, 2, 20)): "cvt_w24_224"}


def _uniform(config: HFConfig, key: str, default: Any, path: Path) -> Any:
    values = config.get(key, [default])
    if len(set(values)) != 1:
        raise VitlabError(f"{path}: per-stage {key} {values} is not supported (one value for all stages)")
    return values[0]


def cvt_from_hf(config: HFConfig, weights: dict[str, Tensor], path: Path) -> Checkpoint:
    """CvtForImageClassification / CvtModel directory -> vitlab cvt_* Checkpoint."""
    cls = [bool(c) for c in config.get("cls_token", (False, False, True))]
    kernel = int(_uniform(config, "kernel_qkv", 3, path))
    _refuse(path, [(any(cls[:-1]), f"cls_token {cls} (ours: last stage only)"),
                   (set(config.get("qkv_projection_method", ["dw_bn"])) != {"dw_bn"},
                    f"qkv_projection_method {config.get('qkv_projection_method')}"),
                   (set(config.get("padding_q", [kernel // 2])) | set(config.get("padding_kv", [kernel // 2]))
                    != {kernel // 2}, "padding_q/padding_kv other than kernel_qkv // 2")])
    sd = fuse_qkv(rename_or_raise(weights, HF_CVT_KEYS, prefix="cvt", head_table=HF_CVT_HEAD_KEYS,
                                  what=f"{path}: weights this CvT converter does not know"))
    args: dict[str, Any] = dict(
        dims=[int(x) for x in config["embed_dim"]], depths=[int(x) for x in config["depth"]],
        num_heads=[int(x) for x in config["num_heads"]], patch_sizes=[int(x) for x in config["patch_sizes"]],
        patch_strides=[int(x) for x in config["patch_stride"]],
        patch_paddings=[int(x) for x in config["patch_padding"]],
        mlp_ratio=float(_uniform(config, "mlp_ratio", 4.0, path)),
        qkv_bias=bool(_uniform(config, "qkv_bias", True, path)), kernel_qkv=kernel,
        stride_kv=int(_uniform(config, "stride_kv", 2, path)), stride_q=int(_uniform(config, "stride_q", 1, path)),
        cls_token=cls[-1], in_chans=int(config.get("num_channels", 3)),
        norm_eps=1e-5,                                 # transformers' CvT LayerNorms use torch's default eps
        num_classes=sd["head.weight"].shape[0] if "head.weight" in sd else 0)
    name = CVT_NAMES.get((tuple(args["dims"]), tuple(args["depths"])), "cvt_13_224")
    return _checkpoint(name, args, sd, config)


# --- ConvNeXt ----------------------------------------------------------------------------------------------------
HF_CONVNEXT_KEYS: KeyTable = [
    ("embeddings.patch_embeddings.{p}", "stem.0.{p}"),
    ("embeddings.layernorm.{p}", "stem.1.{p}"),
    ("encoder.stages.{i}.downsampling_layer.{m}.{p}", "stages.{i}.downsample.{m}.{p}"),   # 0: LayerNorm, 1: conv
    ("encoder.stages.{i}.layers.{j}.dwconv.{p}", "stages.{i}.blocks.{j}.conv_dw.{p}"),
    ("encoder.stages.{i}.layers.{j}.layernorm.{p}", "stages.{i}.blocks.{j}.norm.{p}"),
    ("encoder.stages.{i}.layers.{j}.pwconv1.{p}", "stages.{i}.blocks.{j}.mlp.fc1.{p}"),
    ("encoder.stages.{i}.layers.{j}.pwconv2.{p}", "stages.{i}.blocks.{j}.mlp.fc2.{p}"),
    ("encoder.stages.{i}.layers.{j}.layer_scale_parameter", "stages.{i}.blocks.{j}.gamma"),
    ("layernorm.{p}", "head_norm.{p}"),
]
HF_CONVNEXT_HEAD_KEYS: KeyTable = [("classifier.{p}", "head.{p}")]
CONVNEXT_NAMES = {((96, 192, 384, 768), (3, 3, 9, 3)): "convnext_tiny",
                  ((96, 192, 384, 768), (3, 3, 27, 3)): "convnext_small",
                  ((128, 256, 512, 1024), (3, 3, 27, 3)): "convnext_base",
                  ((192, 384, 768, 1536), (3, 3, 27, 3)): "convnext_large"}


def convnext_from_hf(config: HFConfig, weights: dict[str, Tensor], path: Path) -> Checkpoint:
    """ConvNextForImageClassification / ConvNextModel directory -> vitlab convnext_* Checkpoint."""
    _refuse(path, [(config.get("hidden_act", "gelu") != "gelu", f"hidden_act {config.get('hidden_act')!r}")])
    sd = fuse_qkv(rename_or_raise(weights, HF_CONVNEXT_KEYS, prefix="convnext", head_table=HF_CONVNEXT_HEAD_KEYS,
                                  what=f"{path}: weights this ConvNeXt converter does not know"))
    patch = config.get("patch_size", 4)
    img = config.get("image_size", 224)
    args: dict[str, Any] = dict(
        dims=[int(x) for x in config["hidden_sizes"]], depths=[int(x) for x in config["depths"]],
        patch_size=int(patch[0] if isinstance(patch, (list, tuple)) else patch),
        img_size=int(img[0] if isinstance(img, (list, tuple)) else img),
        in_chans=int(config.get("num_channels", 3)),
        layer_scale_init=float(config.get("layer_scale_init_value", 1e-6)),
        norm_eps=1e-6,                                 # transformers hard-codes 1e-6 inside the network ...
        head_norm_eps=float(config.get("layer_norm_eps", 1e-12)),    # ... and uses the config's for the head
        drop_path_rate=float(config.get("drop_path_rate", 0.0)),
        num_classes=sd["head.weight"].shape[0] if "head.weight" in sd else 0)
    name = CONVNEXT_NAMES.get((tuple(args["dims"]), tuple(args["depths"])), "convnext_tiny")
    return _checkpoint(name, args, sd, config)


# --- shared ------------------------------------------------------------------------------------------------------
def _refuse(path: Path, checks: list[tuple[bool, str]]) -> None:
    bad = [msg for failed, msg in checks if failed]
    if bad:
        raise VitlabError(f"{path}: not supported by the vitlab model: {'; '.join(bad)}")


def _checkpoint(name: str, args: dict[str, Any], sd: dict[str, Tensor], config: HFConfig) -> Checkpoint:
    pre = config.get("_preprocessor", {})
    mean, std = pre.get("image_mean", IMAGENET_MEAN), pre.get("image_std", IMAGENET_STD)
    args["mean"], args["std"] = [float(x) for x in mean], [float(x) for x in std]
    meta: dict[str, Any] = {"source_format": "hf", "mean": args["mean"], "std": args["std"]}
    if classes := _hf_classes(config):
        meta["classes"] = classes
    return Checkpoint(name, args, sd, meta)


# --- writing: vitlab -> transformers ----------------------------------------------------------------------------
def _is(model: nn.Module, cls_name: str) -> bool:
    return type(model).__name__ == cls_name


def resnet_to_hf(model: nn.Module) -> tuple[HFConfig, dict[str, Tensor], HFConfig]:
    c = model.cfg
    _refuse_export(model, [(c.stem != "imagenet", f"stem={c.stem!r} (transformers has the 7x7 stem only)")])
    config = {"model_type": "resnet", "num_channels": c.in_chans, "embedding_size": c.stem_width,
              "hidden_sizes": [w * c.expansion for w in c.widths], "depths": list(c.layers), "layer_type": c.block,
              "hidden_act": "relu", "downsample_in_first_stage": False, "downsample_in_bottleneck": False}
    return _export(model, "resnet", "ResNet", config, HF_RESNET_KEYS, HF_RESNET_HEAD_KEYS, ("fc",))


def cvt_to_hf(model: nn.Module) -> tuple[HFConfig, dict[str, Tensor], HFConfig]:
    c = model.cfg
    n = len(c.dims)
    _refuse_export(model, [(not c.cls_token, "no [CLS] token (transformers' CvT classifier needs it)"),
                           (c.norm_eps != 1e-5, f"norm_eps={c.norm_eps} (transformers: 1e-5)")])
    config = {"model_type": "cvt", "num_channels": c.in_chans, "patch_sizes": list(c.patch_sizes),
              "patch_stride": list(c.patch_strides), "patch_padding": list(c.patch_paddings),
              "embed_dim": list(c.dims), "num_heads": list(c.num_heads), "depth": list(c.depths),
              "mlp_ratio": [c.mlp_ratio] * n, "attention_drop_rate": [c.attn_drop_rate] * n,
              "drop_rate": [c.drop_rate] * n, "drop_path_rate": [0.0] * (n - 1) + [c.drop_path_rate],
              "qkv_bias": [c.qkv_bias] * n, "cls_token": [False] * (n - 1) + [True],
              "qkv_projection_method": ["dw_bn"] * n, "kernel_qkv": [c.kernel_qkv] * n,
              "padding_kv": [c.kernel_qkv // 2] * n, "stride_kv": [c.stride_kv] * n,
              "padding_q": [c.kernel_qkv // 2] * n, "stride_q": [c.stride_q] * n}
    return _export(model, "cvt", "Cvt", config, HF_CVT_KEYS, HF_CVT_HEAD_KEYS, ("norm", "head"))


def convnext_to_hf(model: nn.Module) -> tuple[HFConfig, dict[str, Tensor], HFConfig]:
    c = model.cfg
    _refuse_export(model, [(c.kernel_size != 7, f"kernel_size={c.kernel_size}"),
                           (c.mlp_ratio != 4.0, f"mlp_ratio={c.mlp_ratio}"),
                           (c.norm_eps != 1e-6, f"norm_eps={c.norm_eps} (transformers: 1e-6)")])
    img = c.img_size if isinstance(c.img_size, int) else int(c.img_size[0])
    config = {"model_type": "convnext", "num_channels": c.in_chans, "patch_size": c.patch_size,
              "num_stages": len(c.dims), "hidden_sizes": list(c.dims), "depths": list(c.depths),
              "hidden_act": "gelu", "layer_norm_eps": c.head_norm_eps, "layer_scale_init_value": c.layer_scale_init,
              "drop_path_rate": c.drop_path_rate, "image_size": img}
    return _export(model, "convnext", "ConvNext", config, HF_CONVNEXT_KEYS, HF_CONVNEXT_HEAD_KEYS, ("head",))


def _refuse_export(model: nn.Module, checks: list[tuple[bool, str]]) -> None:
    bad = [msg for failed, msg in checks if failed]
    if bad:
        raise VitlabError(f"{getattr(model, 'vitlab_name', type(model).__name__)}: transformers has no "
                          f"equivalent of {'; '.join(bad)}")


def _export(model: nn.Module, prefix: str, cls: str, config: HFConfig, body_table: KeyTable, head_table: KeyTable,
            head_modules: tuple[str, ...]) -> tuple[HFConfig, dict[str, Tensor], HFConfig]:
    """Rename our state dict to transformers' on-disk names and complete the config (labels, architecture)."""
    c = model.cfg
    sd = split_qkv(dict(model.state_dict()))
    heads = {k: sd.pop(k) for k in list(sd) if k.split(".")[0] in head_modules}
    body, unknown = rename(sd, body_table, reverse=True)
    head_sd, unknown_heads = rename(heads, head_table, reverse=True)
    if unknown or unknown_heads:
        raise VitlabError(f"{getattr(model, 'vitlab_name', 'model')}: no transformers name for "
                          f"{', '.join(unknown + unknown_heads)}")
    with_head = c.num_classes > 0
    weights = ({f"{prefix}.{k}": v for k, v in body.items()} | head_sd) if with_head else body | head_sd
    classes = getattr(model, "vitlab_meta", {}).get("classes") or [f"LABEL_{i}" for i in range(c.num_classes)]
    config = {"architectures": [f"{cls}ForImageClassification" if with_head else f"{cls}Model"], **config,
              "id2label": {str(i): label for i, label in enumerate(classes)},
              "label2id": {label: i for i, label in enumerate(classes)}}
    img = c.img_size if isinstance(c.img_size, int) else int(c.img_size[0])
    preprocessor = {"image_processor_type": "ConvNextImageProcessor", "do_resize": True,
                    "size": {"shortest_edge": img}, "crop_pct": 224 / 256, "resample": 3, "do_rescale": True,
                    "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(c.mean),
                    "image_std": list(c.std)}
    return config, weights, preprocessor


register_hf_architecture(HFArchitecture("resnet", resnet_from_hf, resnet_to_hf, lambda m: _is(m, "ResNet")))
register_hf_architecture(HFArchitecture("cvt", cvt_from_hf, cvt_to_hf, lambda m: _is(m, "CvT")))
register_hf_architecture(HFArchitecture("convnext", convnext_from_hf, convnext_to_hf, lambda m: _is(m, "ConvNeXt")))
