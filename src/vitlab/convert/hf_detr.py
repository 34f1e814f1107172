"""DETR checkpoints: HF transformers `DetrForObjectDetection` directories and facebookresearch/detr state dicts
<-> vitlab detr_* (read both; write HF for `vitlab convert --to hf` and the benchmark's reference, write the
facebookresearch layout with `facebook_state_dict`).

Three name sets, each a key table against ours:
- HF on disk (what save_pretrained writes and the hub holds): `model.backbone.conv_encoder.model.*`,
  `self_attn.out_proj`, `layers.N.fc1`; the backbone in HF's ResNet names (`embedder.embedder.convolution`,
  `encoder.stages.S.layers.J.layer.K`) or, for hub checkpoints made with timm, torchvision's (`layer1.0.conv1`);
- HF in memory (transformers 5): `model.backbone.model.*`, `o_proj`, `mlp.fc1` (accepted when reading);
- facebookresearch/detr: `backbone.0.body.*`, `transformer.encoder.layers.N.self_attn.in_proj_weight`,
  `multihead_attn`, `linear1`, `query_embed`, `class_embed`, `bbox_embed.layers.N`, `input_proj`.
Projections: HF's q/k/v are fused into our self-attention `qkv` and cross-attention `kv` (k, v); detr's
`in_proj_weight` is our `qkv` as it is, and in the cross-attention it splits into `q` and `kv`.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import VitlabError
from . import Checkpoint
from ._keymap import KeyTable, count_blocks, fuse_qkv, group_keys, rename, split_qkv
from .hf import HFArchitecture, HFConfig, _hf_classes, register_hf_architecture
from .hf_convnets import HF_RESNET_KEYS
from .timm import TimmFamily, register_timm_family

log = logging.getLogger(__name__)

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TORCHVISION_RESNET_KEYS: KeyTable = [   # timm's = torchvision's = ours
    ("conv1.weight", "conv1.weight"), ("bn1.{p}", "bn1.{p}"),
    ("layer{s}.{j}.conv{c}.weight", "layer{s}.{j}.conv{c}.weight"),
    ("layer{s}.{j}.bn{c}.{p}", "layer{s}.{j}.bn{c}.{p}"),
    ("layer{s}.{j}.downsample.{m}.{p}", "layer{s}.{j}.downsample.{m}.{p}"),
]
RESNET_DEPTHS = {"resnet18": ("basic", (2, 2, 2, 2)), "resnet34": ("basic", (3, 4, 6, 3)),
                 "resnet50": ("bottleneck", (3, 4, 6, 3)), "resnet101": ("bottleneck", (3, 4, 23, 3)),
                 "resnet152": ("bottleneck", (3, 8, 36, 3))}


def _prefixed(prefix: str, table: KeyTable, ours: str = "backbone.") -> KeyTable:
    return [(prefix + theirs, ours + mine) for theirs, mine in table]


def _transformer_keys(attn_out: str, fc: str) -> KeyTable:
    """HF's encoder/decoder names (below `model.`) with the given output-projection and FFN spellings."""
    enc, dec = "encoder.layers.{i}", "decoder.layers.{i}"
    return [
        (f"{enc}.self_attn.q_proj.{{p}}", f"{enc}.self_attn.q.{{p}}"),                   # fused below
        (f"{enc}.self_attn.k_proj.{{p}}", f"{enc}.self_attn.k.{{p}}"),
        (f"{enc}.self_attn.v_proj.{{p}}", f"{enc}.self_attn.v.{{p}}"),
        (f"{enc}.self_attn.{attn_out}.{{p}}", f"{enc}.self_attn.proj.{{p}}"),
        (f"{enc}.self_attn_layer_norm.{{p}}", f"{enc}.norm1.{{p}}"),
        (f"{enc}.{fc}1.{{p}}", f"{enc}.mlp.fc1.{{p}}"),
        (f"{enc}.{fc}2.{{p}}", f"{enc}.mlp.fc2.{{p}}"),
        (f"{enc}.final_layer_norm.{{p}}", f"{enc}.norm2.{{p}}"),
        (f"{dec}.self_attn.q_proj.{{p}}", f"{dec}.self_attn.q.{{p}}"),
        (f"{dec}.self_attn.k_proj.{{p}}", f"{dec}.self_attn.k.{{p}}"),
        (f"{dec}.self_attn.v_proj.{{p}}", f"{dec}.self_attn.v.{{p}}"),
        (f"{dec}.self_attn.{attn_out}.{{p}}", f"{dec}.self_attn.proj.{{p}}"),
        (f"{dec}.self_attn_layer_norm.{{p}}", f"{dec}.norm1.{{p}}"),
        (f"{dec}.encoder_attn.q_proj.{{p}}", f"{dec}.cross_attn.q.{{p}}"),
        (f"{dec}.encoder_attn.k_proj.{{p}}", f"{dec}.cross_attn.kv_k.{{p}}"),          # fused into kv below
        (f"{dec}.encoder_attn.v_proj.{{p}}", f"{dec}.cross_attn.kv_v.{{p}}"),
        (f"{dec}.encoder_attn.{attn_out}.{{p}}", f"{dec}.cross_attn.proj.{{p}}"),
        (f"{dec}.encoder_attn_layer_norm.{{p}}", f"{dec}.norm2.{{p}}"),
        (f"{dec}.{fc}1.{{p}}", f"{dec}.mlp.fc1.{{p}}"),
        (f"{dec}.{fc}2.{{p}}", f"{dec}.mlp.fc2.{{p}}"),
        (f"{dec}.final_layer_norm.{{p}}", f"{dec}.norm3.{{p}}"),
    ]


_HF_COMMON: KeyTable = [
    ("model.input_projection.{p}", "input_proj.{p}"),
    ("model.query_position_embeddings.weight", "query_embed.weight"),
    ("model.decoder.layernorm.{p}", "decoder.norm.{p}"),
    ("class_labels_classifier.{p}", "head.{p}"),
    ("bbox_predictor.layers.{i}.{p}", "box_head.layers.{i}.{p}"),
]
# On-disk names first: writing (reverse) takes the first template that matches.
HF_DETR_KEYS: KeyTable = (_prefixed("model.backbone.conv_encoder.model.", HF_RESNET_KEYS) + _HF_COMMON
                          + _prefixed("model.", _transformer_keys("out_proj", "fc"), ours=""))
HF5_DETR_KEYS: KeyTable = (_prefixed("model.backbone.model.", HF_RESNET_KEYS) + _HF_COMMON
                           + _prefixed("model.", _transformer_keys("o_proj", "mlp.fc"), ours=""))
HF_DETR_TIMM_BACKBONE_KEYS: KeyTable = (_prefixed("model.backbone.conv_encoder.model.", TORCHVISION_RESNET_KEYS)
                                        + _prefixed("model.backbone.model.", TORCHVISION_RESNET_KEYS))

# facebookresearch/detr (models/detr.py, backbone.py, transformer.py).
_FB_ENC, _FB_DEC = "transformer.encoder.layers.{i}", "transformer.decoder.layers.{i}"
FACEBOOK_DETR_KEYS: KeyTable = _prefixed("backbone.0.body.", TORCHVISION_RESNET_KEYS) + [
    ("input_proj.{p}", "input_proj.{p}"),
    ("query_embed.weight", "query_embed.weight"),
    (f"{_FB_ENC}.self_attn.in_proj_weight", "encoder.layers.{i}.self_attn.qkv.weight"),
    (f"{_FB_ENC}.self_attn.in_proj_bias", "encoder.layers.{i}.self_attn.qkv.bias"),
    (f"{_FB_ENC}.self_attn.out_proj.{{p}}", "encoder.layers.{i}.self_attn.proj.{p}"),
    (f"{_FB_ENC}.linear1.{{p}}", "encoder.layers.{i}.mlp.fc1.{p}"),
    (f"{_FB_ENC}.linear2.{{p}}", "encoder.layers.{i}.mlp.fc2.{p}"),
    (f"{_FB_ENC}.norm{{n}}.{{p}}", "encoder.layers.{i}.norm{n}.{p}"),
    ("transformer.encoder.norm.{p}", "encoder.norm.{p}"),                              # pre-norm only
    (f"{_FB_DEC}.self_attn.in_proj_weight", "decoder.layers.{i}.self_attn.qkv.weight"),
    (f"{_FB_DEC}.self_attn.in_proj_bias", "decoder.layers.{i}.self_attn.qkv.bias"),
    (f"{_FB_DEC}.self_attn.out_proj.{{p}}", "decoder.layers.{i}.self_attn.proj.{p}"),
    (f"{_FB_DEC}.multihead_attn.in_proj_weight", "decoder.layers.{i}.cross_attn.in_proj.weight"),   # q | kv
    (f"{_FB_DEC}.multihead_attn.in_proj_bias", "decoder.layers.{i}.cross_attn.in_proj.bias"),
    (f"{_FB_DEC}.multihead_attn.out_proj.{{p}}", "decoder.layers.{i}.cross_attn.proj.{p}"),
    (f"{_FB_DEC}.linear1.{{p}}", "decoder.layers.{i}.mlp.fc1.{p}"),
    (f"{_FB_DEC}.linear2.{{p}}", "decoder.layers.{i}.mlp.fc2.{p}"),
    (f"{_FB_DEC}.norm{{n}}.{{p}}", "decoder.layers.{i}.norm{n}.{p}"),
    ("transformer.decoder.norm.{p}", "decoder.norm.{p}"),
    ("class_embed.{p}", "head.{p}"),
    ("bbox_embed.layers.{i}.{p}", "box_head.layers.{i}.{p}"),
]


# --- the projection transforms -----------------------------------------------------------------------------------
def _is_cross(key: str) -> bool:
    return ".cross_attn." in key


def fuse_projections(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Intermediate names -> ours: self-attention q/k/v -> qkv; cross-attention kv_k + kv_v -> kv (rows k, v);
    cross-attention in_proj (rows q, k, v) -> q and kv."""
    out = fuse_qkv({k: v for k, v in sd.items() if not _is_cross(k)})
    for key, value in sd.items():
        if not _is_cross(key):
            continue
        prefix, part, param = key.rsplit(".", 2)
        if part == "kv_k":
            out[f"{prefix}.kv.{param}"] = torch.cat([value, sd[f"{prefix}.kv_v.{param}"]], dim=0)
        elif part == "in_proj":
            dim = value.shape[0] // 3
            out[f"{prefix}.q.{param}"], out[f"{prefix}.kv.{param}"] = value[:dim], value[dim:]
        elif part != "kv_v":
            out[key] = value
    return out


def split_projections(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of fuse_projections for HF's layout: qkv -> q/k/v; cross-attention kv -> kv_k/kv_v."""
    out = split_qkv({k: v for k, v in sd.items() if not _is_cross(k)})
    for key, value in sd.items():
        if not _is_cross(key):
            continue
        prefix, part, param = key.rsplit(".", 2)
        if part == "kv":
            k, v = value.chunk(2, dim=0)
            out[f"{prefix}.kv_k.{param}"], out[f"{prefix}.kv_v.{param}"] = k.contiguous(), v.contiguous()
        else:
            out[key] = value
    return out


def _rename_all(weights: dict[str, Tensor], table: KeyTable, path: Path | str, family: str) -> dict[str, Tensor]:
    weights = {k: v for k, v in weights.items() if not k.endswith("num_batches_tracked")}
    sd, unknown = rename(weights, table)
    if unknown:
        raise VitlabError(f"{path}: weights this {family} converter does not know: {group_keys(sorted(unknown))}")
    return fuse_projections(sd)


# --- reading HF --------------------------------------------------------------------------------------------------
def detr_from_hf(config: HFConfig, weights: dict[str, Tensor], path: Path) -> Checkpoint:
    """DetrForObjectDetection directory -> vitlab detr_* Checkpoint."""
    _refuse(path, [
        (config.get("position_embedding_type", "sine") != "sine",
         f"position_embedding_type {config.get('position_embedding_type')!r} (sine only)"),
        (config.get("activation_function", "relu") != "relu", f"activation_function "
                                                              f"{config.get('activation_function')!r}"),
        (bool(config.get("dilation")), "dilation (DC5 backbones)"),
        (config.get("encoder_attention_heads", 8) != config.get("decoder_attention_heads", 8),
         "different encoder and decoder head counts"),
        (config.get("encoder_ffn_dim", 2048) != config.get("decoder_ffn_dim", 2048),
         "different encoder and decoder FFN widths"),
        (not any(k.startswith("class_labels_classifier.") for k in weights),
         "no detection head (a DetrModel, not DetrForObjectDetection)"),
    ])
    backbone, timm_layout = _hf_backbone(config, path)
    table = (HF_DETR_TIMM_BACKBONE_KEYS if timm_layout else []) + HF_DETR_KEYS + HF5_DETR_KEYS
    sd = _rename_all(weights, table, path, "DETR")
    sd = _drop_unused_stages(sd, len(backbone["layers"]))
    pre = config.get("_preprocessor", {})
    mean = [float(x) for x in pre.get("image_mean", IMAGENET_MEAN)]
    std = [float(x) for x in pre.get("image_std", IMAGENET_STD)]
    size = pre.get("size") or {}
    img = int(size.get("shortest_edge") or size.get("height") or 800) if isinstance(size, dict) else 800
    args: dict[str, Any] = dict(
        img_size=img, num_classes=sd["head.weight"].shape[0] - 1, num_queries=int(config.get("num_queries", 100)),
        dim=int(config.get("d_model", 256)), enc_layers=int(config.get("encoder_layers", 6)),
        dec_layers=int(config.get("decoder_layers", 6)), num_heads=int(config.get("encoder_attention_heads", 8)),
        ffn_dim=int(config.get("encoder_ffn_dim", 2048)), dropout=float(config.get("dropout", 0.1)),
        attn_drop_rate=float(config.get("attention_dropout", 0.0)), backbone_args=backbone,
        backbone_norm="frozen", in_chans=int(config.get("num_channels", 3)), mean=mean, std=std,
        decoder_norm_between=bool(config.get("auxiliary_loss", False)))
    meta: dict[str, Any] = {"source_format": "hf", "mean": mean, "std": std}
    if classes := _hf_classes(config):
        meta["classes"] = classes
    return Checkpoint(_detr_name(backbone), args, sd, meta)


def _hf_backbone(config: HFConfig, path: Path) -> tuple[dict[str, Any], bool]:
    """(our ResNet arguments, whether the weights use torchvision names (a timm backbone))."""
    bc = config.get("backbone_config") or {}
    timm_name = bc.get("backbone") if bc.get("model_type") == "timm_backbone" else None
    if not bc and config.get("use_timm_backbone", True):
        timm_name = config.get("backbone") or "resnet50"
    if timm_name is not None:
        if timm_name not in RESNET_DEPTHS:
            raise VitlabError(f"{path}: timm backbone {timm_name!r} is not supported "
                              f"(supported: {', '.join(RESNET_DEPTHS)})")
        block, layers = RESNET_DEPTHS[timm_name]
        return {"block": block, "layers": list(layers)}, True
    if bc.get("model_type") != "resnet":
        raise VitlabError(f"{path}: backbone {bc.get('model_type')!r} is not supported (ResNet only)")
    _refuse(path, [(bc.get("hidden_act", "relu") != "relu", f"backbone hidden_act {bc.get('hidden_act')!r}"),
                   (bc.get("downsample_in_first_stage", False), "backbone downsample_in_first_stage"),
                   (bc.get("downsample_in_bottleneck", False), "backbone downsample_in_bottleneck")])
    block = bc.get("layer_type", "bottleneck")
    sizes = [int(x) for x in bc.get("hidden_sizes", (256, 512, 1024, 2048))]
    depths = [int(x) for x in bc.get("depths", (3, 4, 6, 3))]
    out = (bc.get("out_features") or [f"stage{len(depths)}"])[-1]           # DETR reads the last requested map
    stages = int(out.removeprefix("stage")) if out.startswith("stage") and out[5:].isdigit() else len(depths)
    return {"block": block, "layers": depths[:stages],
            "widths": [s // 4 if block == "bottleneck" else s for s in sizes][:stages],
            "stem_width": int(bc.get("embedding_size", 64))}, False


def _drop_unused_stages(sd: dict[str, Tensor], stages: int) -> dict[str, Tensor]:
    """Weights of backbone stages after the one DETR reads (HF computes but does not use them)."""
    return {k: v for k, v in sd.items()
            if not (k.startswith("backbone.layer") and int(k.split(".")[1].removeprefix("layer")) > stages)}


def _detr_name(backbone: dict[str, Any]) -> str:
    """A registered name close to the architecture (the stored arguments carry the exact settings)."""
    if backbone["block"] == "basic" and list(backbone["layers"]) == [2, 2, 2, 2]:
        return "detr_resnet18"
    return "detr_resnet50"


def _refuse(path: Path | str, checks: list[tuple[bool, str]]) -> None:
    bad = [msg for failed, msg in checks if failed]
    if bad:
        raise VitlabError(f"{path}: not supported by vitlab's DETR: {'; '.join(bad)}")


# --- writing HF --------------------------------------------------------------------------------------------------
def is_detr(model: nn.Module) -> bool:
    return type(model).__name__ == "DETR"


def hf_detr_config(model: nn.Module, allow_small_stem: bool = False) -> HFConfig:
    """transformers' DetrConfig (as a dict) of our DETR; settings it cannot express are refused."""
    c = model.cfg
    b = dict(c.backbone_args)
    name = getattr(model, "vitlab_name", "model")
    bad = [msg for failed, msg in [
        (c.backbone != "resnet", f"backbone={c.backbone!r} (transformers' DETR takes a ResNet here)"),
        (c.norm_first, "norm_first (transformers' DETR is post-norm)"),
        (b.get("stem", "imagenet") != "imagenet" and not allow_small_stem,
         f"stem={b.get('stem')!r} (transformers' ResNet has the 7x7 stem only)"),
        (c.pos_temperature != 10000.0, f"pos_temperature={c.pos_temperature}"),
    ] if failed]
    if bad:
        raise VitlabError(f"{name}: transformers has no equivalent of {'; '.join(bad)}")
    backbone = model.backbone.cfg
    classes = getattr(model, "vitlab_meta", {}).get("classes") or [f"LABEL_{i}" for i in range(c.num_classes)]
    return {
        "architectures": ["DetrForObjectDetection"], "model_type": "detr",
        "use_timm_backbone": False, "use_pretrained_backbone": False,
        "backbone_config": {"model_type": "resnet", "num_channels": c.in_chans, "embedding_size": backbone.stem_width,
                            "hidden_sizes": [w * backbone.expansion for w in backbone.widths],
                            "depths": list(backbone.layers), "layer_type": backbone.block, "hidden_act": "relu",
                            "downsample_in_first_stage": False, "downsample_in_bottleneck": False,
                            "out_features": [f"stage{len(backbone.layers)}"]},
        "num_channels": c.in_chans, "num_queries": c.num_queries, "d_model": c.dim,
        "encoder_layers": c.enc_layers, "decoder_layers": c.dec_layers, "encoder_attention_heads": c.num_heads,
        "decoder_attention_heads": c.num_heads, "encoder_ffn_dim": c.ffn_dim, "decoder_ffn_dim": c.ffn_dim,
        "activation_function": "relu", "dropout": c.dropout, "attention_dropout": c.attn_drop_rate,
        "activation_dropout": c.dropout, "position_embedding_type": "sine", "dilation": False,
        "auxiliary_loss": c.decoder_norm_between,    # transformers' auxiliary_loss changes its decoder (see DETRConfig)
        "id2label": {str(i): label for i, label in enumerate(classes)},
        "label2id": {label: i for i, label in enumerate(classes)},
    }


def hf_detr_weights(model: nn.Module, in_memory: bool = False) -> dict[str, Tensor]:
    """Our state dict in transformers' names: on disk (save_pretrained's), or transformers 5's in-memory ones."""
    sd = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    out, unknown = rename(split_projections(sd), HF5_DETR_KEYS if in_memory else HF_DETR_KEYS, reverse=True)
    if unknown:
        raise VitlabError(f"{getattr(model, 'vitlab_name', 'model')}: no transformers name for "
                          f"{group_keys(sorted(unknown))}")
    return out


def detr_to_hf(model: nn.Module) -> tuple[HFConfig, dict[str, Tensor], HFConfig]:
    """A vitlab DETR as transformers' DetrForObjectDetection: (config, on-disk weights, preprocessor)."""
    config = hf_detr_config(model)
    c = model.cfg
    img = c.img_size if isinstance(c.img_size, int) else int(min(c.img_size))
    preprocessor = {"image_processor_type": "DetrImageProcessor", "do_resize": True,
                    "size": {"shortest_edge": img, "longest_edge": img}, "resample": 2, "do_rescale": True,
                    "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(c.mean),
                    "image_std": list(c.std), "do_pad": True, "format": "coco_detection"}
    return config, hf_detr_weights(model), preprocessor


register_hf_architecture(HFArchitecture("detr", detr_from_hf, detr_to_hf, is_detr))


# --- the benchmark's reference -------------------------------------------------------------------------------------
class HFDetrOutputs(nn.Module):
    """transformers' DetrForObjectDetection as x -> {"logits", "boxes"}, like ours."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out = self.model(pixel_values=x)
        return {"logits": out.logits, "boxes": out.pred_boxes}


def hf_detr_reference(ours: nn.Module, check: bool = True) -> HFDetrOutputs:
    """transformers' DetrForObjectDetection built from our config with our weights, in eval mode.

    A "small" ResNet stem (3x3/1 conv, no max-pool), which transformers' ResNet does not offer, is put into its
    embedder by hand, so the small-image variants have a reference too. With `check`, one image through both
    must give the same logits and boxes (to 1e-3)."""
    try:
        import transformers
    except ImportError:
        raise VitlabError("--compare hf needs the transformers package (pip install transformers)") from None
    config = transformers.DetrConfig.from_dict(hf_detr_config(ours, allow_small_stem=True))
    hf = transformers.DetrForObjectDetection(config)     # SDPA attention in the transformer (its default)
    if dict(ours.cfg.backbone_args).get("stem", "imagenet") == "small":
        embedder = hf.model.backbone.model.embedder
        width = ours.backbone.cfg.stem_width
        embedder.embedder.convolution = nn.Conv2d(ours.cfg.in_chans, width, 3, stride=1, padding=1, bias=False)
        embedder.pooler = nn.Identity()
    hf.load_state_dict(hf_detr_weights(ours, in_memory=True), strict=True)
    ref = HFDetrOutputs(hf.float().eval())
    if check:
        _check_equal(ours, ref)
    return ref


def _check_equal(ours: nn.Module, ref: nn.Module) -> None:
    img = ours.cfg.img_size
    size = (img, img) if isinstance(img, int) else tuple(img)
    x = torch.randn(1, ours.cfg.in_chans, *size, generator=torch.Generator().manual_seed(0))
    was_training = ours.training
    with torch.no_grad():
        a, b = ours.eval()(x), ref(x)
    ours.train(was_training)
    diff = max((a[k] - b[k]).abs().max().item() for k in ("logits", "boxes"))
    log.info("HF DETR reference: max |ours - hf| = %.2e over logits and boxes", diff)
    if not diff <= 1e-3:
        raise VitlabError(f"the HF DETR reference does not compute our model (max difference {diff:.2e})")


# --- facebookresearch/detr state dicts ---------------------------------------------------------------------------
def is_facebook_detr(sd: dict[str, Tensor]) -> bool:
    return "query_embed.weight" in sd and any(k.startswith("transformer.decoder.layers.") for k in sd)


def read_facebook_detr(sd: dict[str, Tensor], name: str | None, path: Path) -> Checkpoint:
    """A facebookresearch/detr checkpoint (e.g. detr-r50-e632da11.pth, {"model": state dict}) -> vitlab.

    The head count is not in the weights: detr's default 8, or the named model's."""
    if any(k.startswith("backbone.0.body.layer4.0.conv2") and "dilation" in k for k in sd):
        raise VitlabError(f"{path}: DC5 (dilated) backbones are not supported")
    ours = _rename_all(sd, FACEBOOK_DETR_KEYS, path, "facebookresearch/detr")
    keys = set(ours)
    stages = count_blocks(keys, "backbone.layer{i}.0.conv1.weight") - 1         # layer1.. -> indices 1..S
    layers = [count_blocks(keys, f"backbone.layer{s}.{{i}}.conv1.weight") for s in range(1, stages + 1)]
    block = "bottleneck" if "backbone.layer1.0.conv3.weight" in keys else "basic"
    widths = [ours[f"backbone.layer{s}.0.conv1.weight" if block == "bottleneck" else
                   f"backbone.layer{s}.0.conv2.weight"].shape[0] for s in range(1, stages + 1)]
    stem = ours["backbone.conv1.weight"]                                        # (C, 3, k, k): 7 (ImageNet), 3
    backbone = {"block": block, "layers": layers, "widths": widths, "stem_width": stem.shape[0],
                "stem": "imagenet" if stem.shape[-1] == 7 else "small"}
    heads = 8
    if name:
        from ..variants import default_config

        heads = int(default_config(name).get("num_heads", 8))
    dim = ours["query_embed.weight"].shape[1]
    args: dict[str, Any] = dict(
        num_classes=ours["head.weight"].shape[0] - 1, num_queries=ours["query_embed.weight"].shape[0], dim=dim,
        enc_layers=count_blocks(keys, "encoder.layers.{i}.norm1.weight"),
        dec_layers=count_blocks(keys, "decoder.layers.{i}.norm1.weight"), num_heads=heads,
        ffn_dim=ours["encoder.layers.0.mlp.fc1.weight"].shape[0] if "encoder.layers.0.mlp.fc1.weight" in keys
        else ours["decoder.layers.0.mlp.fc1.weight"].shape[0],
        norm_first="encoder.norm.weight" in keys, backbone_args=backbone, backbone_norm="frozen",
        mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))
    meta = {"source_format": "facebookresearch-detr", "mean": args["mean"], "std": args["std"]}
    return Checkpoint(name or _detr_name(backbone), args, ours, meta)


def facebook_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Our DETR's weights in facebookresearch/detr's names (save as torch.save({"model": sd}, path)). Its
    self-attention `in_proj_weight` is our `qkv` as it is; its cross-attention one is our q and kv stacked."""
    sd = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    out = {k: v for k, v in sd.items() if not _is_cross(k)}
    for key, value in sd.items():
        if not _is_cross(key):
            continue
        prefix, part, param = key.rsplit(".", 2)
        if part == "kv":
            out[f"{prefix}.in_proj.{param}"] = torch.cat([sd[f"{prefix}.q.{param}"], value], dim=0)  # rows q, k, v
        elif part != "q":
            out[key] = value
    out, unknown = rename(out, FACEBOOK_DETR_KEYS, reverse=True)
    if unknown:
        raise VitlabError(f"{getattr(model, 'vitlab_name', 'model')}: no facebookresearch/detr name for "
                          f"{group_keys(sorted(unknown))}")
    return out


register_timm_family(TimmFamily("detr_", is_facebook_detr, read_facebook_detr))
