"""How attention cost grows with the token count: time and peak memory of one forward + backward per type.

    results = bench_attention(["full", "linformer"], [256, 1024, 4096])
    write_attention_report(results, "runs/bench-attention")      # JSON + plot

Method. Each attention type is built alone (dim 64, 2 heads, batch 1 by default) on a square token grid, no prefix
tokens. Time: the fastest of `repeats` forward + backward passes after one warm-up (the minimum is the
least disturbed by other processes sharing the CPU). Peak memory: the largest
amount of memory allocated at any moment of one forward + backward beyond what was live before it (input and
parameters excluded; saved activations, attention matrices and gradients included). On CPU it is read from the
allocator itself: torch.profiler(profile_memory=True) records every allocation and free of the CPU allocator with
its size and time, and we take the maximum of their running sum. On CUDA it is torch.cuda.max_memory_allocated.
By default the explicit softmax path runs (`fused=False`): it materialises every score matrix, which is what the
textbook costs count; the fused path (scaled_dot_product_attention) may use a flash kernel that never stores the
n x n matrix, and is measured with fused=True.
"""
from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ..errors import VitlabError
from ..io import atomic_path, write_json
from ..layers.efficient_attention import ATTENTION_TYPES, make_attention

log = logging.getLogger(__name__)

MEMORY_METHOD = {
    "cpu": "torch.profiler(profile_memory=True): max running sum of CPU-allocator allocations/frees during the step",
    "cuda": "torch.cuda.max_memory_allocated during the step, minus memory allocated before it",
}


def grid_for(tokens: int) -> tuple[int, int]:
    """The most square (H, W) with H * W = tokens, H <= W."""
    h = math.isqrt(tokens)
    while tokens % h:
        h -= 1
    return h, tokens // h


def peak_memory_bytes(fn: Callable[[], Any], device: torch.device) -> int:
    """Largest extra memory allocated at any moment while `fn()` runs (bytes)."""
    return memory_profile(fn, device)[0]


def memory_profile(fn: Callable[[], Any], device: torch.device) -> tuple[int, int]:
    """(peak, retained) bytes of `fn()`: the largest extra memory allocated at any moment while it runs, and what
    it leaves allocated when it returns (caches it built)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before, torch.cuda.memory_allocated(device) - before
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with _quiet_native_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == DeviceType.CPU)
    current = peak = 0
    for _, nbytes in events:                    # allocations positive, frees negative, in time order
        current += nbytes
        peak = max(peak, current)
    return peak, current


@contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Silence file descriptor 2 for a moment: the profiler's C++ side prints start/stop lines there."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def bench_one(kind: str, tokens: int, *, dim: int = 64, heads: int = 2, batch: int = 1, fused: bool = False,
              repeats: int = 3, device: str | torch.device = "cpu", **attn_kwargs: Any) -> dict[str, Any]:
    """ms and peak MB of one forward + backward of attention `kind` on `tokens` tokens."""
    device = torch.device(device)
    grid = grid_for(tokens)
    torch.manual_seed(0)
    attn = make_attention(kind, dim, heads, grid_size=grid, **attn_kwargs).to(device).eval()
    attn.fused = fused
    x = torch.randn(batch, tokens, dim, device=device, requires_grad=True)

    def step() -> None:
        attn(x).sum().backward()
        x.grad = None
        attn.zero_grad(set_to_none=True)

    def timed() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - t0) * 1e3

    result: dict[str, Any] = {"type": kind, "tokens": tokens, "grid": list(grid)}
    try:
        step()                                                                    # warm-up
        result["ms"] = min(timed() for _ in range(repeats))
        result["peak_mb"] = peak_memory_bytes(step, device) / 2**20
        result["status"] = "ok"
    except (torch.OutOfMemoryError, RuntimeError) as e:   # CPU allocators raise RuntimeError("... can't allocate ...")
        if "memory" not in str(e).lower():
            raise
        result.update(ms=None, peak_mb=None, status="oom")
        log.warning("%s at %d tokens: out of memory", kind, tokens)
    return result


def bench_attention(kinds: list[str] | None = None, tokens: list[int] | None = None, **kwargs: Any
                    ) -> list[dict[str, Any]]:
    """bench_one for every (type, token count); one dict per pair (type, tokens, grid, ms, peak_mb, status)."""
    kinds = list(kinds or ATTENTION_TYPES)
    tokens = list(tokens or [256, 1024, 4096, 16384])
    unknown = [k for k in kinds if k not in ATTENTION_TYPES]
    if unknown:
        raise VitlabError(f"unknown attention type {unknown[0]!r} (choose from {', '.join(ATTENTION_TYPES)})")
    if any(n < 4 for n in tokens):
        raise VitlabError(f"token counts must be >= 4, got {min(tokens)}")
    results = []
    for n in tokens:
        for kind in kinds:
            r = bench_one(kind, n, **kwargs)
            log.debug("%s", r)
            results.append(r)
    return results


def growth_exponents(results: list[dict[str, Any]], key: str = "peak_mb") -> dict[str, float | None]:
    """Per type, the slope of log(key) against log(tokens) (least squares): 2 for ~n^2, 1 for ~n."""
    out: dict[str, float | None] = {}
    for kind in dict.fromkeys(r["type"] for r in results):
        pts = [(math.log(r["tokens"]), math.log(r[key])) for r in results
               if r["type"] == kind and r.get(key) and r[key] > 0]
        if len(pts) < 2:
            out[kind] = None
            continue
        mx = sum(p[0] for p in pts) / len(pts)
        my = sum(p[1] for p in pts) / len(pts)
        out[kind] = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
    return out


def format_table(results: list[dict[str, Any]]) -> str:
    """Tokens x type table of 'ms / MB', plus the fitted growth exponents."""
    kinds = list(dict.fromkeys(r["type"] for r in results))
    tokens = sorted({r["tokens"] for r in results})
    cell = {(r["type"], r["tokens"]): r for r in results}
    width = 19
    lines = ["tokens".rjust(7) + "".join(k.rjust(width) for k in kinds),
             " " * 7 + "".join("ms / peak MB".rjust(width) for _ in kinds)]
    for n in tokens:
        row = str(n).rjust(7)
        for k in kinds:
            r = cell.get((k, n))
            text = "-" if r is None else r["status"].upper() if r["status"] != "ok" else \
                f"{r['ms']:.1f} / {r['peak_mb']:.1f}"
            row += text.rjust(width)
        lines.append(row)
    for key, label in (("ms", "time ~ n^"), ("peak_mb", "mem  ~ n^")):
        exps = growth_exponents(results, key)
        lines.append(label.rjust(7) + "".join(("-" if exps[k] is None else f"{exps[k]:.2f}").rjust(width)
                                               for k in kinds))
    return "\n".join(lines)


def write_attention_report(results: list[dict[str, Any]], out: str | Path, settings: dict[str, Any] | None = None
                           ) -> dict[str, Path]:
    """attention_bench.json (results, exponents, method) and attention_bench.png (log-log time and memory)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = (settings or {}).get("device", "cpu")
    payload = {"settings": settings or {}, "memory_method": MEMORY_METHOD["cuda" if "cuda" in str(device) else "cpu"],
               "results": results, "time_exponent": growth_exponents(results, "ms"),
               "memory_exponent": growth_exponents(results, "peak_mb")}
    json_path, png_path = out / "attention_bench.json", out / "attention_bench.png"
    write_json(json_path, payload)
    _plot(results, png_path)
    return {"json": json_path, "plot": png_path}


def _plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "ms", "forward + backward time (ms)"),
                           (axes[1], "peak_mb", "peak memory (MB)")):
        for kind in dict.fromkeys(r["type"] for r in results):
            pts = [(r["tokens"], r[key]) for r in results if r["type"] == kind and r.get(key)]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=kind)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("tokens n")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend()
    fig.suptitle("attention cost vs sequence length")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
