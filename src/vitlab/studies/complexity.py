"""Study: the cost of self-attention grows with the square of the token count, a convolution's linearly.

The lecture's claim: a convolution y_i = sum_k x_{i+k} w_k costs O(n) in the number of positions n, global
self-attention y_i = sum_j softmax(q_i k_j) v_j costs O(n^2). We measure, against input size at a fixed patch
size (so tokens grow with pixels), the parameters, multiply-adds, forward+backward time and memory of a ViT, a
Swin (window attention: linear again), a ResNet and a ConvMixer, and fit log-log slopes: ~2 is quadratic, ~1
linear. Memory is measured twice for the ViT: with the explicit softmax path (the n x n weights are stored) and
the fused kernel, which on recent PyTorch never materialises them.

The timings are repeated in --seeds independent rounds (each the fastest of --repeats passes), a slope is fitted
per round, and the verdicts (vitlab.studies.verdict, paired over rounds) are on the claim "the ViT's slope is
larger than the ResNet's" for time and for memory with the explicit softmax; the multiply-add count is exact (the
same in every round). The lecture's setting is ImageNet-size inputs (196 tokens at 224 px, patch 16); patch 4 here
gives 64..3136 tokens, the range where the n^2 term overtakes the linear ones.

    vitlab study complexity                 # sizes 32..224 at patch 4 (64..3136 tokens), 3 rounds: ~10 min
    vitlab study complexity --quick         # sizes 16, 32, one round: a smoke test (no verdict)
"""
from __future__ import annotations

import argparse
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..bench.flops import count_macs
from ..checks import int_arg
from ..errors import VitlabError
from ..layers import Attention
from ..registry import create_model, list_models
from . import _common as common
from .verdict import compare

log = logging.getLogger(__name__)

NAME = "complexity"
HELP = "params, FLOPs, time and memory vs token count: self-attention O(n^2) vs convolution O(n)"
CLAIM = "the cost of global self-attention grows with the square of the number of tokens, a convolution's linearly"
PAPER = "Vaswani et al. 2017, Table 1 (complexity per layer); lecture 004 'Complexity'"
RESNET_LABEL = "ResNet"

# label -> registered model; taken when registered (the families land separately), skipped otherwise
MODELS = {
    "ViT (global attention)": "vit_micro_patch4_32",
    "Swin (window attention)": "swin_micro_patch2_window4_32",
    "ResNet": "resnet_micro_32",
    "ConvMixer": "convmixer_128_4_ks5_p2_32",
}
VIT_LABEL = "ViT (global attention)"
FULL_SIZES = (32, 64, 96, 128, 160, 192, 224)
QUICK_SIZES = (16, 32)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", type=_sizes_arg, default=None,
                   help=f"comma-separated input sizes (default {','.join(map(str, FULL_SIZES))})")
    p.add_argument("--batch-size", type=int_arg(at_least=1), default=2)
    p.add_argument("--repeats", type=int_arg(at_least=1), default=3,
                   help="timed forward+backward passes per point (fastest)")
    common.add_seed_arguments(p)


def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = QUICK_SIZES if args.quick else _sizes(args.sizes) if args.sizes else FULL_SIZES
    repeats = 1 if args.quick else args.repeats
    rounds = common.seed_list(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    available = set(list_models())
    results: dict[str, Any] = {"study": NAME, "quick": args.quick, "note": common.QUICK_NOTE if args.quick else None,
                               "command": common.command_line(NAME, args, add_arguments), "seeds": rounds,
                               "sizes": list(sizes), "batch_size": args.batch_size, "models": {}, "skipped": {}}
    for label, name in MODELS.items():
        if name not in available:
            results["skipped"][label] = f"{name} is not registered"
            log.info("complexity: %s skipped (%s not registered)", label, name)
            continue
        results["models"][label] = measure_family(name, sizes, args.batch_size, repeats,
                                                  explicit_memory=label == VIT_LABEL, rounds=len(rounds))
    # one fit per timing round (memory and MACs are exact: the same in every round)
    results["slopes_per_round"] = {label: [fit_slopes(round_points(r["points"], k)) for k in range(len(rounds))]
                                   for label, r in results["models"].items()}
    results["slopes"] = {label: fit_slopes(r["points"]) for label, r in results["models"].items()}
    results["claims"] = claims(results["slopes_per_round"], args.quick)
    results["table"] = table(results["slopes_per_round"])
    return common.finish(results, out, NAME, log=log, plots={"complexity.png": lambda path: plot(results, path)},
                         difference="%+.3f")


def round_points(points: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """The points with the seconds of timing round k."""
    return [{**p, "seconds": p["seconds_per_round"][k]} for p in points]


def claims(per_round: dict[str, list[dict[str, float | None]]], quick: bool) -> list[dict[str, Any]]:
    """The ViT's upper-half log-log slope vs the ResNet's, paired over timing rounds."""
    if VIT_LABEL not in per_round or RESNET_LABEL not in per_round:
        return []
    vit, cnn = per_round[VIT_LABEL], per_round[RESNET_LABEL]
    out = []
    for key, what in (("gmacs_upper", "multiply-adds"), ("seconds_upper", "forward+backward time"),
                      ("memory_mb_explicit_upper", "memory (explicit softmax)")):
        cnn_key = "memory_mb_upper" if key.startswith("memory") else key
        a, b = [r[key] or 0.0 for r in vit], [r[cnn_key] or 0.0 for r in cnn]
        out.append(common.claim(f"ViT's {what} grows faster with pixels than the ResNet's (log-log slope)", PAPER,
                                compare(a, b, paired=True, quick=quick),
                                vit_slope=common.summary(a, 3), resnet_slope=common.summary(b, 3)))
    return out


def table(per_round: dict[str, list[dict[str, float | None]]]) -> list[dict[str, Any]]:
    """Per model: each upper-half slope, mean ± std over rounds (2 = quadratic, 1 = linear in pixels)."""
    rows = []
    for label, rounds in per_round.items():
        row: dict[str, Any] = {"model": label}
        for key, name in (("gmacs_upper", "MACs slope"), ("seconds_upper", "time slope"),
                          ("memory_mb_upper", "memory slope"), ("memory_mb_explicit_upper", "memory slope, explicit")):
            values = [r[key] for r in rounds if r.get(key) is not None]
            row[name] = common.summary(values, 3)["text"] if values else "-"
        rows.append(row)
    return rows


def _sizes(text: str | Sequence[int]) -> tuple[int, ...]:
    """--sizes as a tuple: "32,64" or a sequence of ints; at least two positive sizes (a slope needs two)."""
    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip()) if isinstance(text, str) else tuple(text)
    except ValueError:
        raise VitlabError(f"--sizes takes comma-separated integers, got {text!r}") from None
    if len(sizes) < 2:
        raise VitlabError("--sizes needs at least two sizes to fit a slope")
    if min(sizes) < 1:
        raise VitlabError(f"--sizes must be positive, got {text!r}")
    return sizes


def _sizes_arg(text: str) -> tuple[int, ...]:
    """argparse face of _sizes: refused while the command line is parsed."""
    try:
        return _sizes(text)
    except VitlabError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--sizes ")) from None


def measure_family(name: str, sizes: tuple[int, ...], batch: int, repeats: int,
                   explicit_memory: bool = False, rounds: int = 1) -> dict[str, Any]:
    """One model at every size: params, GMACs, forward+backward seconds (the fastest of each round) and memory
    (MB) per batch."""
    points, skipped = [], {}
    for size in sizes:
        try:
            model = create_model(name, img_size=size, num_classes=10)
        except VitlabError as e:          # e.g. a Swin stage grid that the window does not divide
            skipped[size] = str(e)
            continue
        grid = getattr(getattr(model, "patch_embed", None), "num_patches", None)
        point = {"size": size, "pixels": size * size, "tokens": grid,
                 "params": sum(p.numel() for p in model.parameters()),
                 "gmacs": count_macs(_on_meta(name, size), (1, 3, size, size)) / 1e9}
        timed = [time_and_memory(model, size, batch, repeats, memory=k == 0) for k in range(rounds)]
        point.update(timed[0])
        point["seconds_per_round"] = [t["seconds"] for t in timed]
        point["seconds"] = min(point["seconds_per_round"])
        if explicit_memory:
            point["memory_mb_explicit"] = with_explicit_attention(model, memory_mb, size, batch)
        points.append(point)
        log.info("complexity: %s %dpx: %.3f GMACs, %.3fs, %.1f MB", name, size, point["gmacs"], point["seconds"],
                 point["memory_mb"])
    return {"model": name, "points": points, "skipped_sizes": skipped}


def _on_meta(name: str, size: int) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, img_size=size, num_classes=10).eval()


def time_and_memory(model: nn.Module, size: int, batch: int, repeats: int, memory: bool = True) -> dict[str, float]:
    """Wall time of forward + backward on a random batch (the fastest of `repeats` after one warm-up: on a
    shared machine the minimum is the least disturbed estimate), and its memory."""
    model.train()
    x = torch.randn(batch, 3, size, size)
    step(model, x)                                       # warm-up: allocator, kernels, lazy init
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step(model, x)
        times.append(time.perf_counter() - t0)
    return {"seconds": min(times), **({"memory_mb": memory_mb(model, size, batch)} if memory else {})}


def step(model: nn.Module, x: Tensor) -> None:
    model.zero_grad(set_to_none=True)
    model(x).float().square().mean().backward()


def memory_mb(model: nn.Module, size: int, batch: int) -> float:
    """Memory of one forward+backward in MB. On CUDA the allocator's peak; on CPU (no allocator statistics) the
    bytes autograd saves for backward (distinct storages), the part that grows with the input."""
    device = next(model.parameters()).device
    x = torch.randn(batch, 3, size, size, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step(model, x)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:          # weights (and views of them) do not grow with the input
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    model.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(x).float().square().mean()
    loss.backward()
    return sum(storages.values()) / 2**20


def with_explicit_attention(model: nn.Module, fn: Callable[..., float], *args: Any) -> float:
    """fn(model, *args) with every Attention module on its explicit softmax path (weights stored), then restore."""
    modules = [m for m in model.modules() if isinstance(m, Attention)]
    flags = [m.fused for m in modules]
    try:
        for m in modules:
            m.fused = False
        return fn(model, *args)
    finally:
        for m, f in zip(modules, flags):
            m.fused = f


def fit_slopes(points: list[dict[str, Any]]) -> dict[str, float | None]:
    """Least-squares slope of log(metric) on log(pixels), over all sizes and over the upper half (asymptote)."""
    out: dict[str, float | None] = {}
    for key in ("gmacs", "seconds", "memory_mb", "memory_mb_explicit"):
        pts = [(p["pixels"], p[key]) for p in points if p.get(key)]
        out[key] = _slope(pts)
        out[key + "_upper"] = _slope(pts[(len(pts) - 1) // 2:]) if len(pts) >= 3 else out[key]
    return out


def _slope(pts: list[tuple[float, float]]) -> float | None:
    if len(pts) < 2:
        return None
    xs = [math.log(x) for x, _ in pts]
    ys = [math.log(y) for _, y in pts]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return round(sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den, 3) if den else None


def plot(results: dict[str, Any], path: Path) -> None:
    from ..explain.plots import new_figure

    fig = new_figure(15, 4.2)
    panels = [("gmacs", "GMACs per image (forward)"),
              ("seconds", f"seconds per batch of {results['batch_size']} (fwd+bwd), ± std over rounds"),
              ("memory_mb", "memory, MB (fwd+bwd)")]
    colours = {name: f"C{i}" for i, name in enumerate(MODELS)}
    for i, (key, label) in enumerate(panels):
        ax = fig.add_subplot(1, 3, i + 1)
        for name, r in results["models"].items():
            x = [p["pixels"] for p in r["points"]]
            slope = results["slopes"][name][key + "_upper"]
            values = [p["seconds_per_round"] if key == "seconds" else [p[key]] for p in r["points"]]
            common.errorbar_plot(ax, x, values, f"{name}: slope {slope}", color=colours[name])
            if key == "memory_mb" and name == VIT_LABEL:
                slope = results["slopes"][name]["memory_mb_explicit_upper"]
                ax.plot(x, [p["memory_mb_explicit"] for p in r["points"]], "--", marker="o", markersize=3,
                        color=colours[name], label=f"ViT, explicit softmax: slope {slope}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("input pixels (tokens x patch area)")
        ax.set_title(label, fontsize=9)
        ax.grid(True, alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(common.quick_title("Cost vs input size, log-log (slopes fitted on the larger half): 2 = O(n^2), "
                                    "1 = O(n)", results["quick"]), fontsize=10)
    common.save(fig, path)
