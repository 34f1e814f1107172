"""`vitlab models --table`: our parameter counts and GFLOPs beside the published ones.

GFLOPs are multiply-accumulates (what the papers call FLOPs) at the model's native input size, counted on the
meta device by vitlab.bench.flops. PUBLISHED holds the reference figures: the paper's where it gives them, else
timm's model table (more digits than the papers' rounded ones).
"""
from __future__ import annotations

from typing import NamedTuple

from ..errors import VitlabError
from .flops import model_summary


class Published(NamedTuple):
    params_m: float                 # millions of parameters
    gflops: float | None            # GMACs at the native input size; None where not published
    source: str


PUBLISHED: dict[str, Published] = {
    # DeiT (Touvron et al. 2021, Table 1); FLOPs from timm (the paper's "1.3"/"4.6" round these).
    "deit_tiny_patch16_224": Published(5.72, 1.26, "DeiT paper / timm"),
    "deit_small_patch16_224": Published(22.05, 4.61, "DeiT paper / timm"),
    "deit_base_patch16_224": Published(86.57, 17.58, "DeiT paper / timm"),
    # ViT (Dosovitskiy et al. 2021, Table 1 parameters; GMACs from timm).
    "vit_small_patch16_224": Published(22.05, 4.61, "timm"),
    "vit_base_patch16_224": Published(86.57, 17.58, "ViT paper / timm"),
    "vit_large_patch16_224": Published(304.33, 61.6, "ViT paper / timm"),
    "vit_tiny_patch16_224": Published(5.72, 1.26, "timm"),
    "vit_huge_patch14_224": Published(632.0, 167.4, "ViT paper (632M) / timm GMACs"),
    # Swin (Liu et al. 2021, Table 1) and MViT-B-16 (Fan et al. 2021, Table 3).
    "swin_tiny_patch4_window7_224": Published(28.3, 4.5, "Swin paper"),
    "swin_small_patch4_window7_224": Published(49.6, 8.7, "Swin paper"),
    "swin_base_patch4_window7_224": Published(87.8, 15.4, "Swin paper"),
    "mvit_base_16_224": Published(36.6, 7.8, "MViT paper"),
    # ResNet (He et al. 2016, Table 1: 1.8 / 3.6 / 3.8 GFLOPs for 18/34/50; 3.8 counts the v1 stride placement).
    "resnet18": Published(11.69, 1.82, "timm"),
    "resnet34": Published(21.80, 3.67, "timm"),
    "resnet50": Published(25.56, 4.11, "timm (CvT paper Table 4: 25M / 4.1)"),
    "resnet101": Published(44.55, 7.83, "timm"),
    # CvT (Wu et al. 2021, Table 4).
    "cvt_13_224": Published(20.0, 4.5, "CvT paper"),
    "cvt_21_224": Published(32.0, 7.1, "CvT paper"),
    # MLP-Mixer (Tolstikhin et al. 2021, Table 1 params; GMACs from timm).
    "mixer_s16_224": Published(18.5, 3.79, "timm"),
    "mixer_b16_224": Published(59.88, 12.62, "timm"),
    "mixer_l16_224": Published(208.2, 44.57, "timm"),
    # ConvMixer (Trockman & Kolter 2022, Table 1).
    "convmixer_768_32": Published(21.1, 20.7, "ConvMixer paper"),
    "convmixer_1536_20": Published(51.6, None, "ConvMixer paper"),
    # ConvNeXt (Liu et al. 2022, Table 1).
    "convnext_tiny": Published(28.6, 4.5, "ConvNeXt paper (timm: 28.59M / 4.47)"),
    "convnext_small": Published(50.2, 8.7, "ConvNeXt paper"),
    "convnext_base": Published(88.6, 15.4, "ConvNeXt paper"),
    "convnext_large": Published(197.8, 34.4, "ConvNeXt paper"),
    # Hybrid ViT: timm's vit_small_r26_s32_224 (BiT-style ResNet-26 with GroupNorm; same parameter count). timm
    # lists 3.56 GMACs, we count 3.46. Not a model difference: our counter on timm's own model (meta device) gives
    # our 3.4639 exactly, convolution by convolution and linear by linear. timm's figure is fvcore's count with
    # explicit attention (fvcore, timm 1.0.29, set_fused_attn(False): 3.5587), and fvcore also counts the
    # normalisations that FlopCounterMode (bench/flops.py) does not: StdConv's weight standardisation, which timm
    # runs as F.batch_norm over the kernels (4 per weight: 0.0557), GroupNorm (5 per activation: 0.0368) and
    # LayerNorm (0.0024); 3.5587 - 0.0949 = 3.4638. Only parameters are compared, since the conventions differ.
    "vit_small_r26_s32_224": Published(36.43, None, "timm"),
}


def delta_percent(ours: float, published: float) -> float:
    return 100.0 * (ours - published) / published


def models_table(names: list[str]) -> str:
    """Markdown table: name | params (M) | GFLOPs | published params / GFLOPs | delta params / GFLOPs (%)."""
    rows = ["| model | input | params (M) | GFLOPs | published params (M) / GFLOPs | Δ params / GFLOPs (%) | source |",
            "|---|---|---:|---:|---:|---:|---|"]
    for name in names:
        try:
            s = model_summary(name)
        except VitlabError as e:          # one broken variant should not hide the others
            rows.append(f"| {name} | | | | | | cannot build: {e} |")
            continue
        params, gflops = s["params"] / 1e6, s["gflops"]
        size = f"{s['input'][1]}x{s['input'][2]}"
        pub = PUBLISHED.get(name)
        if pub is None:
            rows.append(f"| {name} | {size} | {params:.2f} | {gflops:.2f} | | | |")
            continue
        pub_flops = f"{pub.gflops:g}" if pub.gflops is not None else "–"
        d_flops = f"{delta_percent(gflops, pub.gflops):+.1f}" if pub.gflops is not None else "–"
        rows.append(f"| {name} | {size} | {params:.2f} | {gflops:.2f} | {pub.params_m:g} / {pub_flops} | "
                    f"{delta_percent(params, pub.params_m):+.1f} / {d_flops} | {pub.source} |")
    return "\n".join(rows)
