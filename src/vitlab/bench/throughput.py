"""Throughput (images/s), latency and MFU of a training step or an inference pass, side by side with reference
implementations of the same architecture (HF transformers, timm) built in the same process.

The implementations are timed *interleaved* (ours, hf, ours, hf, ...): a shared or throttled machine then slows
every one of them alike, so the ratios hold even when the absolute figures drift. Every implementation gets the
same input, batch, precision, optimizer, loss and compile setting; only the model code differs. A CLIP model is
timed as a contrastive step on B image-text pairs (bench/contrastive.py): its rates are pairs/s.

    result = run_bench(BenchConfig("vit_tiny_patch16_224", mode="train", precision="bf16", compare=("hf",)))
    print(format_table([result]))
"""
from __future__ import annotations

import contextlib
import gc
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import VitlabError
from .contrastive import (PairLogits, PairMacs, check_same_logits, exportable_eos, hf_clip_reference, is_clip,
                          random_texts)
from .peak import matmul_peak, mfu, synchronize

log = logging.getLogger(__name__)

REFERENCES = ("hf", "timm")


@dataclass
class BenchConfig:
    model: str = "vit_tiny_patch16_224"   # registered model name
    mode: str = "infer"                     # "train" (forward + backward + AdamW step) or "infer" (forward)
    precision: str = "fp32"                 # fp32 | bf16 (autocast, CPU included)
    batch_size: int = 32
    img_size: int | None = None             # None: the model's own
    num_classes: int = 100
    device: str = "cpu"
    compare: tuple[str, ...] = ()           # reference implementations: "hf", "timm"
    compile: bool = False                   # torch.compile ours (inference: with freezing, weights constant-folded)
    compile_references: bool | None = None  # torch.compile the references too; None: the same as `compile`
    channels_last: bool = False             # NHWC input and weights (pays off where convolutions dominate)
    warmup: int = 2                         # untimed steps per implementation (compilation happens here)
    repeats: int = 5                        # timed steps per implementation; the median is reported
    threads: int | None = None              # torch.set_num_threads on a CPU (None: leave as is)
    fused_optimizer: bool = True            # AdamW as one fused kernel (vitlab's trainer default); foreach if False
    peak: bool = True                       # measure the matmul peak of this precision, report MFU
    seed: int = 0


@dataclass
class Timing:
    name: str                               # "ours", "hf", "timm"
    seconds: list[float] = field(default_factory=list)   # per timed step (one batch)
    images_per_s: float = 0.0               # batch / median step time
    latency_ms: float = 0.0                 # median step time
    mfu: float | None = None                # model FLOPs utilisation against the measured matmul peak
    memory_mb: float | None = None          # peak memory of one eager step beyond what was live before
    resident_mb: float | None = None        # inference: what the first call leaves allocated (a frozen vitlab
                                            # model's packed Linear weights), not counted in memory_mb


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """Measure `cfg.model` and each reference of `cfg.compare`. Returns a JSON-ready dict:
    config, macs_per_image, peak_flops, timings {name: Timing as dict}, ratios {ref: ours speed / ref speed}."""
    _check(cfg)
    if cfg.threads and torch.device(cfg.device).type == "cpu":
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    raw = build_ours(cfg).to(device)
    clip = is_clip(raw)             # CLIP: a contrastive step on image-text pairs (bench/contrastive.py)
    ours = PairLogits(raw) if clip else raw
    models = {"ours": ours}
    for ref in cfg.compare:
        models[ref] = build_reference(ref, raw).to(device)
    size = raw.patch_embed.img_size if hasattr(raw, "patch_embed") else _input_size(raw, cfg)
    x = torch.randn(cfg.batch_size, 3, *size, device=device)
    y = None if clip else torch.randint(0, cfg.num_classes, (cfg.batch_size,), device=device)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        for m in models.values():
            m.to(memory_format=torch.channels_last)
    inputs: Tensor | tuple[Tensor, Tensor] = x
    if clip:                        # B images and B texts; every reference must give our logits first
        inputs = (x, random_texts(raw, cfg.batch_size, device))
        for ref in cfg.compare:
            check_same_logits(ours, models[ref], inputs, ref)
    compile_refs = cfg.compile if cfg.compile_references is None else cfg.compile_references
    steps = {name: make_step(m, cfg, inputs, y, compile=cfg.compile if name == "ours" else compile_refs)
             for name, m in models.items()}
    # the peak is measured before and after the timed steps and the higher kept: on a shared machine the load can
    # change in between, and a peak taken in a busy moment would flatter the MFU
    peak_before = matmul_peak(cfg.precision, device) if cfg.peak else None
    seconds = time_interleaved(steps, cfg.warmup, cfg.repeats, device)

    from .flops import count_macs

    macs = count_macs(PairMacs(_on_meta(cfg)) if clip else _on_meta(cfg), (1, 3, *size))   # CLIP: per pair
    peak = max(peak_before, matmul_peak(cfg.precision, device)) if cfg.peak else None
    timings = {}
    for name, secs in seconds.items():
        med = statistics.median(secs)
        t = Timing(name, secs, cfg.batch_size / med, 1e3 * med)
        if peak:
            t.mfu = mfu(t.images_per_s, macs, peak, cfg.mode == "train")
        timings[name] = t
    for name, m in models.items():
        timings[name].memory_mb, timings[name].resident_mb = measure_memory(m, cfg, inputs, y)
    ratios = {ref: timings["ours"].images_per_s / timings[ref].images_per_s for ref in cfg.compare}
    return {"config": asdict(cfg), "device_name": device_name(device), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "macs_per_image": macs, "peak_flops": peak,
            "timings": {k: asdict(v) for k, v in timings.items()}, "ratios": ratios}


def _check(cfg: BenchConfig) -> None:
    if cfg.mode not in ("train", "infer"):
        raise VitlabError(f"mode must be train or infer, got {cfg.mode!r}")
    if cfg.precision not in ("fp32", "bf16"):
        raise VitlabError(f"precision must be fp32 or bf16, got {cfg.precision!r}")
    unknown = [r for r in cfg.compare if r not in REFERENCES]
    if unknown:
        raise VitlabError(f"--compare takes {' or '.join(REFERENCES)}, got {', '.join(unknown)}")
    if cfg.batch_size < 1 or cfg.repeats < 1 or cfg.warmup < 0:
        raise VitlabError("batch size and repeats must be at least 1, warm-up at least 0")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise VitlabError("--device cuda: no CUDA device is available")


# --- the implementations -------------------------------------------------------------------------------------------
def build_ours(cfg: BenchConfig) -> nn.Module:
    from ..registry import create_model

    kw = dict(num_classes=cfg.num_classes, img_size=cfg.img_size)
    try:
        with torch.device("meta"):                  # the config, without initialising weights twice
            probe = create_model(cfg.model, **kw)
    except KeyError as e:
        raise VitlabError(str(e).strip("'\"")) from None
    extra = exportable_eos(probe) if is_clip(probe) else {}   # eos 2 -> V - 1 so that HF pools where we do
    return create_model(cfg.model, **kw, **extra)


def _input_size(model: nn.Module, cfg: BenchConfig) -> tuple[int, int]:
    """--img-size, else the model's own (cfg.img_size), else 224."""
    side = cfg.img_size or getattr(getattr(model, "cfg", None), "img_size", None) or 224
    return (side, side) if isinstance(side, int) else tuple(side)


def _on_meta(cfg: BenchConfig) -> nn.Module:
    with torch.device("meta"):
        return build_ours(cfg)


def build_reference(kind: str, ours: nn.Module) -> nn.Module:
    """The same architecture from another library, as a module x -> logits. HF gets our weights (so its logits
    equal ours: a check that the two really are the same model); timm is built by name with its own random init."""
    if kind == "hf":
        return hf_reference(ours)
    if kind == "timm":
        return timm_reference(ours)
    raise VitlabError(f"unknown reference {kind!r}")


class LogitsOnly(nn.Module):
    """Wraps a transformers model so that it maps pixel values to the logits tensor, like ours."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


def hf_reference(ours: nn.Module) -> nn.Module:
    """transformers' ViTForImageClassification (or DeiT) with our config and weights, SDPA attention.

    Written with vitlab's HF exporter and read back with from_pretrained, so transformers applies its own
    checkpoint-name conversions exactly as for a downloaded model."""
    import tempfile

    if type(ours).__name__ == "DETR":    # built in memory from our config (small stems too), outputs checked equal
        from ..convert.hf_detr import hf_detr_reference

        return hf_detr_reference(ours)
    if is_clip(ours):                   # CLIPModel, (images, ids) -> logits_per_image
        return hf_clip_reference(ours)
    try:
        import transformers
    except ImportError:
        raise VitlabError("--compare hf needs the transformers package (pip install transformers)") from None
    from ..convert.export_hf import save_hf

    transformers.utils.logging.disable_progress_bar()          # no "Loading weights" bar in benchmark output
    with tempfile.TemporaryDirectory() as tmp:
        save_hf(ours, tmp)
        model = transformers.AutoModelForImageClassification.from_pretrained(tmp, attn_implementation="sdpa")
    return LogitsOnly(model.float())


def timm_reference(ours: nn.Module) -> nn.Module:
    """timm's model of the same name, size and class count (random weights: speed does not depend on them)."""
    try:
        import timm
    except ImportError:
        raise VitlabError("--compare timm needs the timm package (pip install timm)") from None
    name = getattr(ours, "vitlab_name", None)
    kwargs: dict[str, Any] = {"num_classes": ours.num_classes}
    size = getattr(getattr(ours, "cfg", None), "img_size", None)
    if size is not None:
        kwargs["img_size"] = size
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except RuntimeError as e:   # timm raises RuntimeError for unknown names
        raise VitlabError(f"timm has no model {name!r} ({e})") from None


# --- one step ----------------------------------------------------------------------------------------------------
def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    from ..runtime import autocast as train_autocast

    return train_autocast(device, precision)


def make_step(model: nn.Module, cfg: BenchConfig, x: Tensor | tuple[Tensor, ...], y: Tensor | None,
              compile: bool = False) -> Callable[[], None]:
    """One training step (autocast forward, cross-entropy, backward, AdamW, zero_grad) or one inference forward.

    x: images (B, 3, H, W), or a tuple of model inputs (CLIP: images, input_ids (B, L)); y: labels (B,), or None
    for a contrastive step, whose loss is clip_loss of the (B, B) logits. The same function for every
    implementation, so they differ only in model code (and `compile`)."""
    from ..models.clip import clip_loss

    inputs = x if isinstance(x, tuple) else (x,)
    device = inputs[0].device
    if cfg.mode == "infer":
        from ..layers import freeze_for_inference

        freeze_for_inference(model.eval())      # vitlab Linears keep packed bf16 weights; no-op on other libraries
        # freezing: parameters become constants, so Inductor folds them and pre-packs the GEMM weights
        fn = torch.compile(model, options={"freezing": True}) if compile else model

        def infer() -> None:
            with torch.inference_mode(), autocast(device, cfg.precision):
                fn(*inputs)

        return infer
    from ..train.optim import build_optimizer

    model.train()
    fn = torch.compile(model) if compile else model
    optimizer = build_optimizer(model, 1e-4, 0.05, fused=cfg.fused_optimizer)

    def train() -> None:
        with autocast(device, cfg.precision):
            out = fn(*inputs)
            loss = clip_loss(out) if y is None else F.cross_entropy(out, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return train


def time_interleaved(steps: dict[str, Callable[[], None]], warmup: int, repeats: int,
                     device: torch.device | str = "cpu") -> dict[str, list[float]]:
    """Seconds per call of each step, measured round-robin: warm-up calls first, then `repeats` rounds that each
    time every step once. Garbage is collected between calls so that one implementation's frees are not charged
    to the next."""
    for name, step in steps.items():
        for _ in range(warmup):
            step()
        log.debug("warmed up %s", name)
    synchronize(device)
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            gc.collect()
            synchronize(device)
            t0 = time.perf_counter()
            step()
            synchronize(device)
            seconds[name].append(time.perf_counter() - t0)
    return seconds


def measure_memory(model: nn.Module, cfg: BenchConfig, x: Tensor | tuple[Tensor, ...],
                   y: Tensor | None) -> tuple[float, float | None]:
    """(peak, resident) MB. Peak: the memory one step allocates beyond what was live before it (activations,
    gradients, optimizer state on the first step); CUDA from the allocator's statistics, a CPU from the profiler's
    allocation events. Inference is measured on a second call, after a first whose left-over allocations are the
    resident figure: a frozen vitlab model packs its Linear weights there and keeps them (one more copy of the
    weights), which is memory the model holds, not a cost of each step. Training: resident None."""
    from .attention import memory_profile

    model.zero_grad(set_to_none=True)
    step = make_step(model, cfg, x, y)        # eager: compiled code was measured for speed only
    device = (x[0] if isinstance(x, tuple) else x).device
    resident = None
    if cfg.mode == "infer":
        resident = max(0, memory_profile(step, device)[1]) / 2 ** 20
    return memory_profile(step, device)[0] / 2 ** 20, resident


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return name


# --- reporting ---------------------------------------------------------------------------------------------------
def format_table(results: list[dict[str, Any]]) -> str:
    """Markdown: one row per (model, mode, precision, implementation) with images/s, latency, MFU, memory and
    the speed of ours relative to that row's implementation."""
    rows = ["| model | mode | precision | batch | impl | images/s | ms/batch | MFU | memory (MB) | ours / impl |",
            "|---|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in results:
        c = r["config"]
        refs_compiled = c["compile"] if c.get("compile_references") is None else c["compile_references"]
        for name, t in r["timings"].items():
            compiled = c["compile"] if name == "ours" else refs_compiled
            tag = c["precision"] + (" compiled" if compiled else "") + (" NHWC" if c["channels_last"] else "")
            ratio = f"{r['ratios'][name]:.2f}x" if name in r["ratios"] else ""
            util = f"{100 * t['mfu']:.0f}%" if t["mfu"] is not None else ""
            mem = f"{t['memory_mb']:.0f}" if t["memory_mb"] is not None else ""
            if t.get("resident_mb") and t["resident_mb"] >= 0.5:
                mem += f" (+{t['resident_mb']:.0f} resident)"
            rows.append(f"| {c['model']} | {c['mode']} | {tag} | {c['batch_size']} | {name} | "
                        f"{t['images_per_s']:.1f} | {t['latency_ms']:.0f} | {util} | {mem} | {ratio} |")
    return "\n".join(rows)
