"""timm state dicts of ResNet, ConvNeXt, ConvMixer and MLP-Mixer -> vitlab models of the same names.

Our ResNet and Mixer use timm's (= torchvision's) parameter names, so their tables are identities that also
say exactly which keys we accept; ConvNeXt differs in the head, ConvMixer in its nameless nn.Sequential layout.
A state dict does not record its architecture: stage counts, widths, kernels and patch sizes are read off the
weight shapes; what shapes cannot tell (ConvMixer's activation) comes from the model name or timm's convention.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from ..errors import VitlabError
from . import Checkpoint
from ._keymap import KeyTable, count_blocks, rename_or_raise
from .timm import TimmFamily, register_timm_family

TIMM_RESNET_KEYS: KeyTable = [
    ("conv1.weight", "conv1.weight"), ("bn1.{p}", "bn1.{p}"),
    ("layer{s}.{i}.conv{c}.weight", "layer{s}.{i}.conv{c}.weight"),
    ("layer{s}.{i}.bn{c}.{p}", "layer{s}.{i}.bn{c}.{p}"),
    ("layer{s}.{i}.downsample.{m}.{p}", "layer{s}.{i}.downsample.{m}.{p}"),   # 0: 1x1 conv, 1: BN
    ("fc.{p}", "fc.{p}"),
]
TIMM_CONVNEXT_KEYS: KeyTable = [
    ("stem.{m}.{p}", "stem.{m}.{p}"),                                           # 0: 4x4 conv, 1: LayerNorm
    ("stages.{i}.downsample.{m}.{p}", "stages.{i}.downsample.{m}.{p}"),
    ("stages.{i}.blocks.{j}.conv_dw.{p}", "stages.{i}.blocks.{j}.conv_dw.{p}"),
    ("stages.{i}.blocks.{j}.norm.{p}", "stages.{i}.blocks.{j}.norm.{p}"),
    ("stages.{i}.blocks.{j}.mlp.fc1.{p}", "stages.{i}.blocks.{j}.mlp.fc1.{p}"),
    ("stages.{i}.blocks.{j}.mlp.fc2.{p}", "stages.{i}.blocks.{j}.mlp.fc2.{p}"),
    ("stages.{i}.blocks.{j}.gamma", "stages.{i}.blocks.{j}.gamma"),
    ("head.norm.{p}", "head_norm.{p}"),
    ("head.fc.{p}", "head.{p}"),
]
# timm's ConvMixer is the paper's nn.Sequential: stem = (conv, act, BN); block = (Residual(dwconv, act, BN),
# pwconv, act, BN). Activations have no weights, hence the gaps in the numbering.
TIMM_CONVMIXER_KEYS: KeyTable = [
    ("stem.0.{p}", "stem.proj.{p}"), ("stem.2.{p}", "stem_norm.{p}"),
    ("blocks.{i}.0.fn.0.{p}", "blocks.{i}.conv_dw.{p}"), ("blocks.{i}.0.fn.2.{p}", "blocks.{i}.norm1.{p}"),
    ("blocks.{i}.1.{p}", "blocks.{i}.conv_pw.{p}"), ("blocks.{i}.3.{p}", "blocks.{i}.norm2.{p}"),
    ("head.{p}", "head.{p}"),
]
TIMM_MIXER_KEYS: KeyTable = [
    ("stem.proj.{p}", "stem.proj.{p}"),
    ("blocks.{i}.norm1.{p}", "blocks.{i}.norm1.{p}"),
    ("blocks.{i}.mlp_tokens.{fc}.{p}", "blocks.{i}.mlp_tokens.{fc}.{p}"),
    ("blocks.{i}.norm2.{p}", "blocks.{i}.norm2.{p}"),
    ("blocks.{i}.mlp_channels.{fc}.{p}", "blocks.{i}.mlp_channels.{fc}.{p}"),
    ("norm.{p}", "norm.{p}"), ("head.{p}", "head.{p}"),
]


def _num_classes(sd: dict[str, Tensor], key: str) -> int:
    return sd[key].shape[0] if key in sd else 0


# --- ResNet ------------------------------------------------------------------------------------------------------
def read_timm_resnet(sd: dict[str, Tensor], name: str | None, path: Path) -> Checkpoint:
    sd = rename_or_raise(sd, TIMM_RESNET_KEYS, what=f"{path}: timm weights this ResNet converter does not "
                                                  f"support (a variant we do not have?)")
    stages = [s for s in range(1, 9) if f"layer{s}.0.conv1.weight" in sd]
    bottleneck = "layer1.0.conv3.weight" in sd
    stem = sd["conv1.weight"]                                              # (stem_width, in_chans, k, k)
    args: dict[str, Any] = dict(
        block="bottleneck" if bottleneck else "basic",
        layers=[count_blocks(sd.keys(), f"layer{s}.{{i}}.conv1.weight") for s in stages],
        widths=[sd[f"layer{s}.0.conv1.weight"].shape[0] for s in stages],
        stem="imagenet" if stem.shape[-1] == 7 else "small", stem_width=stem.shape[0], in_chans=stem.shape[1],
        num_classes=_num_classes(sd, "fc.weight"))
    known = {("basic", (2, 2, 2, 2)): "resnet18", ("basic", (3, 4, 6, 3)): "resnet34",
             ("bottleneck", (3, 4, 6, 3)): "resnet50", ("bottleneck", (3, 4, 23, 3)): "resnet101",
             ("bottleneck", (3, 8, 36, 3)): "resnet152"}
    model = known.get((args["block"], tuple(args["layers"])), "resnet50" if bottleneck else "resnet18")
    return Checkpoint(model, args, sd, {"source_format": "timm"})


def _is_resnet(sd: dict[str, Tensor]) -> bool:
    return "conv1.weight" in sd and "layer1.0.conv1.weight" in sd


# --- ConvNeXt ----------------------------------------------------------------------------------------------------
def read_timm_convnext(sd: dict[str, Tensor], name: str | None, path: Path) -> Checkpoint:
    sd = rename_or_raise(sd, TIMM_CONVNEXT_KEYS, what=f"{path}: timm weights this ConvNeXt converter does not "
                                                  f"support (a variant we do not have?)")
    n_stages = count_blocks(sd.keys(), "stages.{i}.blocks.0.conv_dw.weight")
    dw = sd["stages.0.blocks.0.conv_dw.weight"]                            # (dim, 1, k, k)
    args: dict[str, Any] = dict(
        dims=[sd[f"stages.{i}.blocks.0.conv_dw.weight"].shape[0] for i in range(n_stages)],
        depths=[count_blocks(sd.keys(), f"stages.{i}.blocks.{{i}}.conv_dw.weight") for i in range(n_stages)],
        patch_size=sd["stem.0.weight"].shape[-1], in_chans=sd["stem.0.weight"].shape[1], kernel_size=dw.shape[-1],
        mlp_ratio=sd["stages.0.blocks.0.mlp.fc1.weight"].shape[0] / dw.shape[0],
        layer_scale_init=1e-6 if "stages.0.blocks.0.gamma" in sd else 0.0,
        num_classes=_num_classes(sd, "head.weight"))
    known = {((96, 192, 384, 768), (3, 3, 9, 3)): "convnext_tiny", ((96, 192, 384, 768), (3, 3, 27, 3)):
             "convnext_small", ((128, 256, 512, 1024), (3, 3, 27, 3)): "convnext_base",
             ((192, 384, 768, 1536), (3, 3, 27, 3)): "convnext_large"}
    model = known.get((tuple(args["dims"]), tuple(args["depths"])), "convnext_tiny")
    return Checkpoint(model, args, sd, {"source_format": "timm"})


def _is_convnext(sd: dict[str, Tensor]) -> bool:
    return "stem.0.weight" in sd and "stages.0.blocks.0.conv_dw.weight" in sd


# --- ConvMixer ---------------------------------------------------------------------------------------------------
def read_timm_convmixer(sd: dict[str, Tensor], name: str | None, path: Path) -> Checkpoint:
    sd = rename_or_raise(sd, TIMM_CONVMIXER_KEYS, what=f"{path}: timm weights this ConvMixer converter does not "
                                                  f"support (a variant we do not have?)")
    stem = sd["stem.proj.weight"]                                          # (dim, in_chans, p, p)
    dim, depth = stem.shape[0], count_blocks(sd.keys(), "blocks.{i}.conv_dw.weight")
    # Only timm's convmixer_768_32 was trained with ReLU; the activation has no weights to tell.
    relu = (name or "").startswith("convmixer_768_32") or (name is None and (dim, depth) == (768, 32))
    args: dict[str, Any] = dict(dim=dim, depth=depth, patch_size=stem.shape[-1], in_chans=stem.shape[1],
                                kernel_size=sd["blocks.0.conv_dw.weight"].shape[-1], act="relu" if relu else "gelu",
                                num_classes=_num_classes(sd, "head.weight"))
    known = {(768, 32): "convmixer_768_32", (1024, 20): "convmixer_1024_20_ks9_p14", (1536, 20): "convmixer_1536_20"}
    return Checkpoint(known.get((dim, depth), "convmixer_768_32"), args, sd, {"source_format": "timm"})


def _is_convmixer(sd: dict[str, Tensor]) -> bool:
    return "stem.0.weight" in sd and "blocks.0.0.fn.0.weight" in sd


# --- MLP-Mixer ---------------------------------------------------------------------------------------------------
def read_timm_mixer(sd: dict[str, Tensor], name: str | None, path: Path) -> Checkpoint:
    sd = rename_or_raise(sd, TIMM_MIXER_KEYS, what=f"{path}: timm weights this MLP-Mixer converter does not "
                                                  f"support (a variant we do not have?)")
    stem = sd["stem.proj.weight"]                                          # (dim, in_chans, p, p)
    tokens = sd["blocks.0.mlp_tokens.fc1.weight"]                          # (D_S, num_patches)
    side = int(round(tokens.shape[1] ** 0.5))
    if side * side != tokens.shape[1]:
        raise VitlabError(f"{path}: {tokens.shape[1]} patches is not a square grid")
    args: dict[str, Any] = dict(
        dim=stem.shape[0], depth=count_blocks(sd.keys(), "blocks.{i}.norm1.weight"), patch_size=stem.shape[-1],
        in_chans=stem.shape[1], img_size=side * stem.shape[-1], tokens_mlp_dim=tokens.shape[0],
        channels_mlp_dim=sd["blocks.0.mlp_channels.fc1.weight"].shape[0], num_classes=_num_classes(sd, "head.weight"))
    sizes = {512: "s", 768: "b", 1024: "l"}
    model = f"mixer_{sizes.get(args['dim'], 'b')}{16 if args['patch_size'] == 16 else 32}_224"
    return Checkpoint(model, args, sd, {"source_format": "timm"})


def _is_mixer(sd: dict[str, Tensor]) -> bool:
    return "stem.proj.weight" in sd and "blocks.0.mlp_tokens.fc1.weight" in sd


register_timm_family(TimmFamily("resnet", _is_resnet, read_timm_resnet))
register_timm_family(TimmFamily("convnext_", _is_convnext, read_timm_convnext))
register_timm_family(TimmFamily("convmixer_", _is_convmixer, read_timm_convmixer))
register_timm_family(TimmFamily("mixer_", _is_mixer, read_timm_mixer))
