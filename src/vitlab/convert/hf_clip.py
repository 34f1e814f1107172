"""CLIP checkpoints <-> vitlab clip_*: HF transformers CLIP directories (CLIPModel, with the tokenizer files beside
the weights) and the OpenAI / open_clip state-dict layout (`visual.transformer.resblocks.N.attn.in_proj_weight`).

Two differences need more than a rename. HF's patch embedding has no bias and ours does: reading sets it to zero,
writing folds it into the patch positions' embedding (x W + b + pos = x W + (pos + b), exact). OpenAI keeps the
projections as matrices multiplied from the right (x @ proj), ours are Linear weights: transposed both ways.
Text features are read at the end-of-text token: HF pools at the first `eos_token_id`, or at argmax(input_ids)
when a (legacy) config says eos_token_id == 2; OpenAI pools at argmax (eot is the largest id). `text_pool` says
which, so logits equal theirs on any ids.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import VitlabError
from . import FORMATS, Checkpoint, Format, register_format
from ._keymap import KeyTable, count_blocks, fuse_qkv, rename, rename_or_raise, split_qkv
from .hf import HFArchitecture, HFConfig, register_hf_architecture
from .hf_tokenizer import eos_swap, swapped, write_hf_tokenizer
from .safe_load import TORCH_SUFFIXES, load_state_file

log = logging.getLogger(__name__)

_HV, _OV = "vision_model.encoder.layers.{i}", "visual.blocks.{i}"
_HT, _OT = "text_model.encoder.layers.{i}", "text.encoder.layers.{i}"
# transformers' names (on disk and in memory alike) against ours; q/k/v go to attn.q/k/v that fuse_qkv fuses.
HF_CLIP_KEYS: KeyTable = [
    ("vision_model.embeddings.class_embedding", "visual.cls_token"),                 # (D,) vs (1, 1, D)
    ("vision_model.embeddings.patch_embedding.weight", "visual.patch_embed.proj.weight"),
    ("vision_model.embeddings.position_embedding.weight", "visual.pos_embed"),       # (N+1, D) vs (1, N+1, D)
    ("vision_model.pre_layrnorm.{p}", "visual.norm_pre.{p}"),
    (f"{_HV}.layer_norm1.{{p}}", f"{_OV}.norm1.{{p}}"),
    (f"{_HV}.self_attn.q_proj.{{p}}", f"{_OV}.attn.q.{{p}}"),
    (f"{_HV}.self_attn.k_proj.{{p}}", f"{_OV}.attn.k.{{p}}"),
    (f"{_HV}.self_attn.v_proj.{{p}}", f"{_OV}.attn.v.{{p}}"),
    (f"{_HV}.self_attn.out_proj.{{p}}", f"{_OV}.attn.proj.{{p}}"),
    (f"{_HV}.layer_norm2.{{p}}", f"{_OV}.norm2.{{p}}"),
    (f"{_HV}.mlp.fc1.{{p}}", f"{_OV}.mlp.fc1.{{p}}"),
    (f"{_HV}.mlp.fc2.{{p}}", f"{_OV}.mlp.fc2.{{p}}"),
    ("vision_model.post_layernorm.{p}", "visual.norm.{p}"),
    ("visual_projection.weight", "visual_projection.weight"),
    ("text_model.embeddings.token_embedding.weight", "text.embed.tok.weight"),
    ("text_model.embeddings.position_embedding.weight", "text.embed.pos"),
    (f"{_HT}.layer_norm1.{{p}}", f"{_OT}.norm1.{{p}}"),
    (f"{_HT}.self_attn.q_proj.{{p}}", f"{_OT}.self_attn.q.{{p}}"),
    (f"{_HT}.self_attn.k_proj.{{p}}", f"{_OT}.self_attn.k.{{p}}"),
    (f"{_HT}.self_attn.v_proj.{{p}}", f"{_OT}.self_attn.v.{{p}}"),
    (f"{_HT}.self_attn.out_proj.{{p}}", f"{_OT}.self_attn.proj.{{p}}"),
    (f"{_HT}.layer_norm2.{{p}}", f"{_OT}.norm2.{{p}}"),
    (f"{_HT}.mlp.fc1.{{p}}", f"{_OT}.mlp.fc1.{{p}}"),
    (f"{_HT}.mlp.fc2.{{p}}", f"{_OT}.mlp.fc2.{{p}}"),
    ("text_model.final_layer_norm.{p}", "text.encoder.norm.{p}"),
    ("text_projection.weight", "text_projection.weight"),
    ("logit_scale", "logit_scale"),
]
_RV, _RT = "visual.transformer.resblocks.{i}", "transformer.resblocks.{i}"
# OpenAI CLIP / open_clip (`model.state_dict()` of either) against ours. in_proj is already our fused qkv.
# `*.proj_T` are our projections transposed (OpenAI multiplies x @ proj).
OPENAI_CLIP_KEYS: KeyTable = [
    ("visual.class_embedding", "visual.cls_token"),
    ("visual.conv1.weight", "visual.patch_embed.proj.weight"),
    ("visual.positional_embedding", "visual.pos_embed"),
    ("visual.ln_pre.{p}", "visual.norm_pre.{p}"),
    (f"{_RV}.ln_1.{{p}}", f"{_OV}.norm1.{{p}}"),
    (f"{_RV}.attn.in_proj_weight", f"{_OV}.attn.qkv.weight"),
    (f"{_RV}.attn.in_proj_bias", f"{_OV}.attn.qkv.bias"),
    (f"{_RV}.attn.out_proj.{{p}}", f"{_OV}.attn.proj.{{p}}"),
    (f"{_RV}.ln_2.{{p}}", f"{_OV}.norm2.{{p}}"),
    (f"{_RV}.mlp.c_fc.{{p}}", f"{_OV}.mlp.fc1.{{p}}"),
    (f"{_RV}.mlp.c_proj.{{p}}", f"{_OV}.mlp.fc2.{{p}}"),
    ("visual.ln_post.{p}", "visual.norm.{p}"),
    ("visual.proj", "visual_projection.proj_T"),
    ("token_embedding.weight", "text.embed.tok.weight"),
    ("positional_embedding", "text.embed.pos"),
    (f"{_RT}.ln_1.{{p}}", f"{_OT}.norm1.{{p}}"),
    (f"{_RT}.attn.in_proj_weight", f"{_OT}.self_attn.qkv.weight"),
    (f"{_RT}.attn.in_proj_bias", f"{_OT}.self_attn.qkv.bias"),
    (f"{_RT}.attn.out_proj.{{p}}", f"{_OT}.self_attn.proj.{{p}}"),
    (f"{_RT}.ln_2.{{p}}", f"{_OT}.norm2.{{p}}"),
    (f"{_RT}.mlp.c_fc.{{p}}", f"{_OT}.mlp.fc1.{{p}}"),
    (f"{_RT}.mlp.c_proj.{{p}}", f"{_OT}.mlp.fc2.{{p}}"),
    ("ln_final.{p}", "text.encoder.norm.{p}"),
    ("text_projection", "text_projection.proj_T"),
    ("logit_scale", "logit_scale"),
]
_RN = _OURS_RN = "visual.layer{s}.{i}"
# OpenAI's ModifiedResNet tower: our CLIPResNet uses its names, so the visual rows are identities; listed one by
# one so that a name neither model has is reported, not passed through. The text rows are the ViT case's.
OPENAI_CLIP_RN_KEYS: KeyTable = [
    ("visual.conv{n}.weight", "visual.conv{n}.weight"),                    # stem: conv1..3 / bn1..3
    ("visual.bn{n}.{p}", "visual.bn{n}.{p}"),
    (f"{_RN}.conv{{n}}.weight", f"{_OURS_RN}.conv{{n}}.weight"),
    (f"{_RN}.bn{{n}}.{{p}}", f"{_OURS_RN}.bn{{n}}.{{p}}"),
    (f"{_RN}.downsample.0.weight", f"{_OURS_RN}.downsample.0.weight"),     # after the AvgPool ("-1", no weights)
    (f"{_RN}.downsample.1.{{p}}", f"{_OURS_RN}.downsample.1.{{p}}"),
    ("visual.attnpool.positional_embedding", "visual.attnpool.positional_embedding"),   # (1 + g*g, C)
    *[(f"visual.attnpool.{n}_proj.{{p}}", f"visual.attnpool.{n}_proj.{{p}}") for n in "qkvc"],
    *[row for row in OPENAI_CLIP_KEYS if not row[0].startswith("visual.")],
]
# buffers and bookkeeping some saves carry: rebuilt by us, never weights
_DROPPED = ("position_ids", "attn_mask", "input_resolution", "context_length", "vocab_size")
CLIP_SIZES = {(768, 12, 32, 512, 12): "clip_vit_base_patch32_224", (768, 12, 16, 512, 12): "clip_vit_base_patch16_224"}


def _name_for(args: dict[str, Any]) -> str:
    key = (args["vision_dim"], args["vision_depth"], args["patch_size"], args["text_dim"], args["text_depth"])
    return CLIP_SIZES.get(key, "clip_vit_base_patch32_224")   # every size argument is in model_args anyway


def _shape_fixes(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Foreign shapes -> ours: class token (D,) -> (1, 1, D), position table (N, D) -> (1, N, D), a zero
    patch bias, transposed OpenAI projections."""
    sd = dict(sd)
    sd["visual.cls_token"] = sd["visual.cls_token"].reshape(1, 1, -1)
    sd["visual.pos_embed"] = sd["visual.pos_embed"].unsqueeze(0)
    w = sd["visual.patch_embed.proj.weight"]
    sd.setdefault("visual.patch_embed.proj.bias", torch.zeros(w.shape[0], dtype=w.dtype))
    for name in ("visual_projection", "text_projection"):
        if f"{name}.proj_T" in sd:
            sd[f"{name}.weight"] = sd.pop(f"{name}.proj_T").t().contiguous()
    return sd


def _ours_to_foreign_shapes(sd: dict[str, Tensor], openai: bool) -> dict[str, Tensor]:
    """The inverse of _shape_fixes; the patch bias folded into the patches' position embedding."""
    sd = dict(sd)
    bias = sd.pop("visual.patch_embed.proj.bias")
    pos = sd["visual.pos_embed"][0].clone()                                    # (N+1, D)
    pos[1:] += bias
    sd["visual.pos_embed"] = pos
    sd["visual.cls_token"] = sd["visual.cls_token"].reshape(-1)
    if openai:
        for name in ("visual_projection", "text_projection"):
            sd[f"{name}.proj_T"] = sd.pop(f"{name}.weight").t().contiguous()
    return sd


def _tokenizer_extras(path: Path, context_length: int) -> dict[str, Any]:
    """task_extras of a directory that holds tokenizer files (else {}): CLIP's BPE, or the tokenizer.json that
    `--to hf` writes for a word-level vocabulary (vitlab.convert.hf_tokenizer)."""
    from .hf_tokenizer import read_hf_tokenizer

    tok = read_hf_tokenizer(path, context_length)
    return {"task_extras": {"tokenizer": tok.to_dict()}} if tok is not None else {}


# --- HF transformers ---------------------------------------------------------------------------------------------
def clip_from_hf(config: HFConfig, weights: dict[str, Tensor], path: Path) -> Checkpoint:
    """CLIPModel directory -> vitlab clip_* Checkpoint (the tokenizer files, if there, in meta["task_extras"])."""
    text, vision = config.get("text_config") or {}, config.get("vision_config") or {}
    acts = {text.get("hidden_act", "quick_gelu"), vision.get("hidden_act", "quick_gelu")}
    if len(acts) > 1 or not acts <= {"quick_gelu", "gelu"}:
        raise VitlabError(f"{path}: hidden_act {sorted(acts)} is not supported (quick_gelu or gelu, the same in "
                          f"both towers)")
    weights = {k: v for k, v in weights.items() if not k.endswith(_DROPPED)}
    sd = fuse_qkv(rename_or_raise(weights, HF_CLIP_KEYS, what=f"{path}: weights this CLIP converter does not know"))
    sd = _shape_fixes(sd)
    eos = int(text.get("eos_token_id", 49407))
    hidden_v, hidden_t = int(vision.get("hidden_size", 768)), int(text.get("hidden_size", 512))
    args: dict[str, Any] = {
        "img_size": int(vision.get("image_size", 224)), "patch_size": int(vision.get("patch_size", 32)),
        "in_chans": int(vision.get("num_channels", 3)), "vision_dim": hidden_v,
        "vision_depth": int(vision.get("num_hidden_layers", 12)),
        "vision_heads": int(vision.get("num_attention_heads", 12)),
        "vision_mlp_ratio": int(vision.get("intermediate_size", 3072)) / hidden_v,
        "text_dim": hidden_t, "text_depth": int(text.get("num_hidden_layers", 12)),
        "text_heads": int(text.get("num_attention_heads", 8)),
        "text_mlp_ratio": int(text.get("intermediate_size", 2048)) / hidden_t,
        "vocab_size": int(text.get("vocab_size", 49408)),
        "context_length": int(text.get("max_position_embeddings", 77)),
        "embed_dim": int(config.get("projection_dim", 512)), "eos_id": eos,
        "text_pool": "argmax" if eos == 2 else "eos",     # transformers' legacy rule (CLIPTextTransformer)
        "act": acts.pop(), "norm_eps": float(vision.get("layer_norm_eps", 1e-5)),
    }
    pre = config.get("_preprocessor", {})
    if "image_mean" in pre and "image_std" in pre:
        args["mean"], args["std"] = [float(x) for x in pre["image_mean"]], [float(x) for x in pre["image_std"]]
    meta: dict[str, Any] = {"source_format": "hf", **_tokenizer_extras(path, args["context_length"])}
    return Checkpoint(_name_for(args), args, sd, meta, interpolation="bicubic", antialias=False)


def can_write_clip(model: nn.Module) -> bool:
    from ..models.clip import CLIP

    return isinstance(model, CLIP)


def clip_to_hf(model: nn.Module) -> tuple[HFConfig, dict[str, Tensor], HFConfig]:
    """A vitlab CLIP as transformers' CLIPModel (config, weights, preprocessor)."""
    c = model.cfg
    name = getattr(model, "vitlab_name", "model")
    if getattr(c, "vision", "vit") != "vit":
        raise VitlabError(f"{name}: transformers' CLIPModel has a ViT image tower only; this one is {c.vision}")
    if c.text_pool == "argmax" and c.eos_id != 2:
        raise VitlabError(f"{name}: pools text at argmax(ids), which transformers does only with eos_token_id 2")
    swap = _eos_swap(model)
    sd = _ours_to_foreign_shapes(split_qkv(dict(model.state_dict())), openai=False)
    weights, unknown = rename(sd, HF_CLIP_KEYS, reverse=True)
    if unknown:
        raise VitlabError(f"{name}: no transformers name for {', '.join(unknown)}")
    if swap is not None:                    # eos 2 -> V - 1 (and that word -> 2), as write_clip_tokenizer does
        order = torch.arange(c.vocab_size)
        order[list(swap)] = torch.tensor(swap[::-1])
        key = "text_model.embeddings.token_embedding.weight"
        weights[key] = weights[key][order].contiguous()
    common = {"hidden_act": c.act, "layer_norm_eps": c.norm_eps, "attention_dropout": 0.0,
              "initializer_range": 0.02, "initializer_factor": 1.0}
    config: HFConfig = {
        "architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": c.embed_dim,
        "logit_scale_init_value": math.log(c.logit_scale_init),
        "text_config": {**common, "model_type": "clip_text_model", "vocab_size": c.vocab_size,
                        "hidden_size": c.text_dim, "intermediate_size": int(c.text_dim * c.text_mlp_ratio),
                        "num_hidden_layers": c.text_depth, "num_attention_heads": c.text_heads,
                        "max_position_embeddings": c.context_length, "eos_token_id": swapped(c.eos_id, swap),
                        **_special_ids(model, swap),
                        "projection_dim": c.embed_dim},
        "vision_config": {**common, "model_type": "clip_vision_model", "hidden_size": c.vision_dim,
                          "intermediate_size": int(c.vision_dim * c.vision_mlp_ratio),
                          "num_hidden_layers": c.vision_depth, "num_attention_heads": c.vision_heads,
                          "image_size": c.img_size, "patch_size": c.patch_size, "num_channels": c.in_chans,
                          "projection_dim": c.embed_dim},
    }
    preprocessor: HFConfig = {
        "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": c.img_size},
        "do_center_crop": True, "crop_size": {"height": c.img_size, "width": c.img_size}, "resample": 3,
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": list(c.mean), "image_std": list(c.std), "do_convert_rgb": True,
    }
    return config, weights, preprocessor


def _model_tokenizer(model: nn.Module) -> Any:
    """The tokenizer a CLIP model was trained or converted with, or None (a fresh model)."""
    from ..tasks.contrastive import clip_tokenizer

    try:
        return clip_tokenizer(model)
    except VitlabError:
        return None


def _eos_swap(model: nn.Module) -> tuple[int, int] | None:
    """The ids exchanged on export (vitlab.convert.hf_tokenizer.eos_swap); VitlabError when eos is 2 and there is
    no tokenizer to renumber with the embedding."""
    c = model.cfg
    swap = eos_swap(c.eos_id, c.vocab_size) if c.text_pool == "eos" else None
    if swap is not None and _model_tokenizer(model) is None:
        raise VitlabError(f"{getattr(model, 'vitlab_name', 'model')}: eos id 2 makes transformers pool at "
                          "argmax(ids) instead of the eos token, and without the model's tokenizer its ids cannot "
                          "be renumbered")
    return swap


def _special_ids(model: nn.Module, swap: tuple[int, int] | None) -> dict[str, int]:
    tok = _model_tokenizer(model)
    if tok is None:
        return {}
    return {"bos_token_id": swapped(tok.bos_id, swap), "pad_token_id": swapped(tok.pad_id, swap)}


def write_clip_tokenizer(model: nn.Module, directory: Path) -> list[Path]:
    """`--to hf`: the model's tokenizer beside the weights (none for a fresh model), renumbered as the weights."""
    tok = _model_tokenizer(model)
    if tok is None:
        log.info("%s: no tokenizer to write (the HF directory holds config and weights only)",
                 getattr(model, "vitlab_name", "model"))
        return []
    return write_hf_tokenizer(tok, directory, model.cfg.context_length, _eos_swap(model))


register_hf_architecture(HFArchitecture("clip", clip_from_hf, clip_to_hf, can_write_clip,
                                        write_files=write_clip_tokenizer))


# --- OpenAI / open_clip state dicts ------------------------------------------------------------------------------
def is_openai_clip_file(path: Path) -> bool:
    if not (path.is_file() and path.suffix in TORCH_SUFFIXES + (".safetensors",)):
        return False
    try:
        keys = set(load_state_file(path, trust_pickle=False))
    except Exception:       # not a weights-only state dict: left to the other readers and their messages
        return False
    return "token_embedding.weight" in keys and ("visual.transformer.resblocks.0.attn.in_proj_weight" in keys
                                                 or "visual.attnpool.c_proj.weight" in keys)


def read_openai_clip(path: Path, trust_pickle: bool = False, num_heads: int | None = None,
                     **_: Any) -> Checkpoint:
    """An OpenAI CLIP / open_clip state dict (ViT or ModifiedResNet image tower) -> vitlab clip_*. The weights do
    not say the head count: width / 64 as OpenAI's ViTs, width * 32 / 64 for its ResNets' attention pool (or
    `num_heads`, both towers); nor the activation: QuickGELU, OpenAI's."""
    sd = {k: v for k, v in load_state_file(path, trust_pickle).items() if not k.endswith(_DROPPED)}
    return openai_clip_checkpoint(sd, path, num_heads=num_heads)


def openai_clip_checkpoint(sd: dict[str, Tensor], path: Path | str = "state dict",
                           num_heads: int | None = None) -> Checkpoint:
    if "visual.attnpool.c_proj.weight" in sd:
        return _openai_rn_checkpoint(sd, path, num_heads)
    ours = _shape_fixes(rename_or_raise(sd, OPENAI_CLIP_KEYS,
                                        what=f"{path}: weights this OpenAI/open_clip converter does not know"))
    patch_weight = ours["visual.patch_embed.proj.weight"]                      # (D, 3, p, p)
    vision_dim, patch = patch_weight.shape[0], patch_weight.shape[-1]
    grid = math.isqrt(ours["visual.pos_embed"].shape[1] - 1)
    text_dim = ours["text.encoder.norm.weight"].shape[0]
    args: dict[str, Any] = {
        "img_size": grid * patch, "patch_size": patch, "vision_dim": vision_dim,
        "vision_depth": count_blocks(list(ours), "visual.blocks.{i}.norm1.weight"),
        "vision_heads": num_heads or max(vision_dim // 64, 1),
        "vision_mlp_ratio": ours["visual.blocks.0.mlp.fc1.weight"].shape[0] / vision_dim,
        "text_dim": text_dim, "text_depth": count_blocks(list(ours), "text.encoder.layers.{i}.norm1.weight"),
        "text_heads": num_heads or max(text_dim // 64, 1),
        "text_mlp_ratio": ours["text.encoder.layers.0.mlp.fc1.weight"].shape[0] / text_dim,
        "vocab_size": ours["text.embed.tok.weight"].shape[0], "context_length": ours["text.embed.pos"].shape[0],
        "embed_dim": ours["text_projection.weight"].shape[0],
        "eos_id": ours["text.embed.tok.weight"].shape[0] - 1, "text_pool": "argmax", "act": "quick_gelu",
    }
    return Checkpoint(_name_for(args), args, ours, {"source_format": "openai_clip"}, interpolation="bicubic")


def _text_args(ours: dict[str, Tensor], num_heads: int | None) -> dict[str, Any]:
    """The text tower's sizes from our-named weights (OpenAI's rules: heads = width / 64, eot the last id)."""
    text_dim = ours["text.encoder.norm.weight"].shape[0]
    vocab = ours["text.embed.tok.weight"].shape[0]
    return {"text_dim": text_dim, "text_depth": count_blocks(list(ours), "text.encoder.layers.{i}.norm1.weight"),
            "text_heads": num_heads or max(text_dim // 64, 1),
            "text_mlp_ratio": ours["text.encoder.layers.0.mlp.fc1.weight"].shape[0] / text_dim,
            "vocab_size": vocab, "context_length": ours["text.embed.pos"].shape[0],
            "embed_dim": ours["text_projection.weight"].shape[0], "eos_id": vocab - 1, "text_pool": "argmax",
            "act": "quick_gelu"}


def openai_rn_args(ours: dict[str, Tensor], num_heads: int | None = None) -> dict[str, Any]:
    """clip_* model args of an OpenAI ModifiedResNet CLIP from its (our-named) weights' shapes: width = the stem's
    last conv (conv3: (width, width/2, 3, 3)), blocks per stage = the layerN.i counted, attention-pool heads =
    width * 32 // 64 (OpenAI's rule), img_size = the pool's grid (position table 1 + g*g rows) times the stride."""
    keys = list(ours)
    stages = count_blocks(keys, "visual.layer{i}.0.conv1.weight") - 1       # layer1.. (1-based)
    layers = tuple(count_blocks(keys, f"visual.layer{s}.{{i}}.conv1.weight") for s in range(1, stages + 1))
    width = ours["visual.conv3.weight"].shape[0]
    grid = math.isqrt(ours["visual.attnpool.positional_embedding"].shape[0] - 1)
    return {"vision": "resnet", "vision_layers": layers, "vision_width": width,
            "vision_heads": num_heads or max(width * 32 // 64, 1), "img_size": grid * 4 * 2 ** (stages - 1),
            "in_chans": ours["visual.conv1.weight"].shape[1], **_text_args(ours, num_heads),
            "embed_dim": ours["visual.attnpool.c_proj.weight"].shape[0]}


def _openai_rn_checkpoint(sd: dict[str, Tensor], path: Path | str, num_heads: int | None) -> Checkpoint:
    ours = rename_or_raise(sd, OPENAI_CLIP_RN_KEYS,
                           what=f"{path}: weights this OpenAI/open_clip ResNet CLIP converter does not know")
    ours["text_projection.weight"] = ours.pop("text_projection.proj_T").t().contiguous()
    for k in [k for k in ours if k.endswith(".running_mean")]:    # OpenAI's files may lack BN's counter
        ours.setdefault(k.replace(".running_mean", ".num_batches_tracked"), torch.tensor(0))
    args = openai_rn_args(ours, num_heads)
    name = "clip_rn50_224" if args["vision_layers"] == (3, 4, 6, 3) else "clip_resnet_micro_64"
    return Checkpoint(name, args, ours, {"source_format": "openai_clip"}, interpolation="bicubic")


def clip_to_openai(model: nn.Module) -> dict[str, Tensor]:
    """A vitlab CLIP's weights in the OpenAI / open_clip layout (what `model.state_dict()` gives there)."""
    sd = dict(model.state_dict())
    if getattr(model.cfg, "vision", "vit") == "resnet":
        sd["text_projection.proj_T"] = sd.pop("text_projection.weight").t().contiguous()
        table = OPENAI_CLIP_RN_KEYS
    else:
        sd, table = _ours_to_foreign_shapes(sd, openai=True), OPENAI_CLIP_KEYS
    out, unknown = rename(sd, table, reverse=True)
    if unknown:
        raise VitlabError(f"{getattr(model, 'vitlab_name', 'model')}: no OpenAI CLIP name for {', '.join(unknown)}")
    return out


_OPENAI_FORMAT = Format("openai_clip", is_openai_clip_file, read_openai_clip,
                        "an OpenAI CLIP / open_clip ViT or ResNet state dict (.pt/.pth/.bin/.safetensors)")
register_format(_OPENAI_FORMAT)
# before the timm reader (which may have registered first): it would take any state-dict file
FORMATS.remove(_OPENAI_FORMAT)
FORMATS.insert(next((i for i, f in enumerate(FORMATS) if f.name == "timm"), len(FORMATS)), _OPENAI_FORMAT)
