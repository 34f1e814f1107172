"""The CPU performance figures of the README, in one command:

    .venv/bin/python benchmarks/cpu_table.py                 # -> benchmarks/results/cpu_table.{md,json}
    .venv/bin/python benchmarks/cpu_table.py --quick         # fewer repeats, no ViT-B (a smoke run)
    .venv/bin/python benchmarks/cpu_table.py --readme        # and put the table into docs/performance.md

What it measures, every comparison in one process with the implementations interleaved (ours, ref, ours, ref, ...),
so a busy machine slows both alike and the ratios hold while absolute figures drift:
  1. ours vs HF transformers (ViTForImageClassification built from our config with our weights, SDPA attention):
     ViT-Ti/16 training (batch 32, AdamW, cross-entropy, fp32 and bf16 autocast), ViT-Ti/16 and ViT-B/16 inference
     (batch 32, fp32 and bf16 autocast), both eager; then the same inference with ours compiled (Inductor, frozen
     weights) against HF eager and HF compiled.
  2. ONNX Runtime vs our eager fp32 at batch 1 (ViT-Ti/16), max logit difference.
  3. SDPA vs the explicit softmax path, forward + backward, at 577 tokens (ViT-B/16 at 384 px: 768 wide, 12 heads).
  4. The fp32 and bf16 matmul peak (2048^3) behind the MFU column.

The glibc allocator keeps freed memory for reuse (vitlab.runtime.keep_freed_memory, what the `vitlab` command
does), for every implementation in the process alike; VITLAB_MALLOC=default measures with glibc's defaults.

Threads: --threads (default 2). OMP_WAIT_POLICY defaults to PASSIVE here: on a machine whose cores are shared with
other jobs, OpenMP's default busy-wait makes a 2-thread PyTorch forward up to 50x slower (a waiting thread spins on
a core the other thread needs); PASSIVE threads sleep instead. It is recorded in the JSON.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # before torch starts OpenMP

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from vitlab.bench.peak import matmul_peak  # noqa: E402
from vitlab.runtime import keep_freed_memory  # noqa: E402
from vitlab.bench.throughput import BenchConfig, device_name, format_table, run_bench, time_interleaved  # noqa: E402

HERE = Path(__file__).resolve().parent


def model_cases(quick: bool) -> list[BenchConfig]:
    ti, b = "vit_tiny_patch16_224", "vit_base_patch16_224"
    repeats = 3 if quick else 7
    cases = [BenchConfig(ti, mode="train", precision=p, repeats=repeats) for p in ("fp32", "bf16")]
    cases += [BenchConfig(ti, mode="infer", precision=p, repeats=repeats) for p in ("fp32", "bf16")]
    if not quick:
        cases += [BenchConfig(b, mode="infer", precision=p, repeats=5, warmup=1) for p in ("fp32", "bf16")]
    return cases


def compiled_cases(quick: bool) -> list[BenchConfig]:
    """Inference with ours compiled; HF once eager (as it ships) and once compiled (the same setting)."""
    ti = "vit_tiny_patch16_224"
    repeats = 3 if quick else 7
    out = []
    for p in ("fp32", "bf16"):
        out.append(BenchConfig(ti, mode="infer", precision=p, repeats=repeats, compile=True, compile_references=False))
        out.append(BenchConfig(ti, mode="infer", precision=p, repeats=repeats, compile=True))
    return out


def onnx_vs_eager(threads: int, repeats: int) -> dict:
    """Our eager fp32 forward vs ONNX Runtime on the exported graph, batch 1, the same thread count."""
    import tempfile

    import vitlab
    from vitlab.export.onnx import OnnxModel, export_onnx

    torch.manual_seed(0)
    model = vitlab.create_model("vit_tiny_patch16_224", num_classes=1000).eval()
    x = torch.randn(1, 3, 224, 224)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / "vit_tiny.onnx")
        session = OnnxModel(path, threads=threads)

        def eager() -> None:
            with torch.inference_mode():
                model(x)

        seconds = time_interleaved({"eager": eager, "onnxruntime": lambda: session(x)}, warmup=3, repeats=repeats)
        with torch.inference_mode():
            diff = float((session(x) - model(x)).abs().max())
    ms = {k: 1e3 * statistics.median(v) for k, v in seconds.items()}
    return {"model": "vit_tiny_patch16_224", "batch": 1, "ms": ms, "ratio": ms["eager"] / ms["onnxruntime"],
            "max_abs_logit_diff": diff}


def sdpa_vs_explicit(repeats: int, tokens: int = 577, batch: int = 4) -> dict:
    """Forward + backward of ViT-B attention, SDPA (fused) vs the explicit softmax path of the same module: the
    attention core alone (what SDPA replaces: q, k, v (B, 12, N, 64) -> output) and the whole layer (with the
    q/k/v and output projections, which cost the same on both paths)."""
    from vitlab.layers import Attention

    torch.manual_seed(0)
    attn = Attention(768, 12)
    x = torch.randn(batch, tokens, 768, requires_grad=True)
    q, k, v = (torch.randn(batch, 12, tokens, 64, requires_grad=True) for _ in range(3))

    def core(fused: bool):
        def run() -> None:
            attn.fused = fused
            attn.attend(q, k, v).sum().backward()
            q.grad = k.grad = v.grad = None
        return run

    def layer(fused: bool):
        def run() -> None:
            attn.fused = fused
            attn(x).sum().backward()
            x.grad = None
            attn.zero_grad(set_to_none=True)
        return run

    seconds = time_interleaved({"core_sdpa": core(True), "core_explicit": core(False), "layer_sdpa": layer(True),
                                "layer_explicit": layer(False)}, warmup=2, repeats=repeats)
    ms = {k: 1e3 * statistics.median(v) for k, v in seconds.items()}
    return {"tokens": tokens, "batch": batch, "dim": 768, "heads": 12, "ms": ms,
            "ratio": ms["core_explicit"] / ms["core_sdpa"], "layer_ratio": ms["layer_explicit"] / ms["layer_sdpa"]}


def sdpa_in_fresh_processes(threads: int, repeats: int) -> dict:
    """sdpa_vs_explicit in a new process, twice: with glibc's default allocator settings, where every n x n score
    matrix of the explicit path is a fresh mmap whose pages fault in (a cost SDPA never pays, as it never builds
    the matrix), and with MALLOC_MMAP_THRESHOLD_ raised so freed blocks are reused, which leaves only the compute."""
    import subprocess

    code = (f"import json, sys, torch; sys.path.insert(0, {str(HERE)!r}); torch.set_num_threads({threads}); "
            f"from cpu_table import sdpa_vs_explicit; print(json.dumps(sdpa_vs_explicit({repeats})))")
    out = {}
    for name, extra in (("default_malloc", {}), ("reused_memory", {"MALLOC_MMAP_THRESHOLD_": str(2 ** 30),
                                                                   "MALLOC_TRIM_THRESHOLD_": str(2 ** 32)})):
        done = subprocess.run([sys.executable, "-c", code], env={**os.environ, **extra}, capture_output=True,
                              text=True, check=True)
        out[name] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def render(results: dict) -> str:
    env = results["environment"]
    malloc = "freed memory kept for reuse" if env.get("malloc_keeps_freed_memory") else "glibc malloc defaults"
    lines = [f"CPU: {env['cpu']}, {env['threads']} threads (OMP_WAIT_POLICY={env['omp_wait_policy']}, {malloc}), "
             f"torch {env['torch']}; matmul peak {env['peak_gflops']['fp32']:.0f} GFLOP/s fp32, "
             f"{env['peak_gflops']['bf16']:.0f} GFLOP/s bf16 (2048^3, at the start of the run; each row's MFU uses "
             "the higher of two peaks measured just before and after its own timing).", "",
             "Ours vs HF transformers, both eager, interleaved in one process (ours / impl = speed ratio):", "",
             format_table(results["eager"]), ""]
    if results.get("compiled"):
        lines += ["Inference with ours compiled (torch.compile, Inductor, frozen weights) vs HF eager and HF compiled:",
                  "", format_table(results["compiled"]), ""]
    o = results["onnx"]
    lines += [f"ONNX Runtime vs our eager fp32, ViT-Ti/16 batch 1: {o['ms']['eager']:.1f} ms vs "
              f"{o['ms']['onnxruntime']:.1f} ms = **{o['ratio']:.2f}x**, max |logit difference| "
              f"{o['max_abs_logit_diff']:.1e}.", ""]
    for name, label in (("default_malloc", "glibc defaults (fresh pages for every score matrix)"),
                        ("reused_memory", "freed memory reused (MALLOC_MMAP_THRESHOLD_=1 GiB)")):
        s = results["sdpa"][name]
        lines += [f"Attention forward + backward at {s['tokens']} tokens (768 wide, 12 heads, batch {s['batch']}, "
                  f"fp32), {label}: the core softmax(QK^T/sqrt(d))V explicit {s['ms']['core_explicit']:.0f} ms vs "
                  f"SDPA {s['ms']['core_sdpa']:.0f} ms = **{s['ratio']:.2f}x**; the whole layer with its "
                  f"projections {s['ms']['layer_explicit']:.0f} vs {s['ms']['layer_sdpa']:.0f} ms = "
                  f"{s['layer_ratio']:.2f}x.", ""]
    lines.append(f"Command: `{results['command']}` ({results['wall_s'] / 60:.0f} min).")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="fewer repeats, no ViT-B, no compiled rows")
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled-inference rows")
    ap.add_argument("--out", default=str(HERE / "results" / "cpu_table"), help="output path without extension")
    ap.add_argument("--readme", action="store_true", help="also replace the table block of docs/performance.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    malloc_kept = keep_freed_memory()        # as the vitlab command does; applies to every implementation alike
    t0 = time.perf_counter()
    repeats = 5 if args.quick else 15
    results: dict = {"command": " ".join(["python benchmarks/cpu_table.py"] + sys.argv[1:]),
                     "environment": {"cpu": device_name(torch.device("cpu")), "threads": args.threads,
                                     "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                                     "malloc_keeps_freed_memory": malloc_kept,
                                     "torch": torch.__version__, "python": platform.python_version(),
                                     "peak_gflops": {p: matmul_peak(p) / 1e9 for p in ("fp32", "bf16")}}}
    results["eager"] = []
    for cfg in model_cases(args.quick):
        cfg.compare, cfg.threads = ("hf",), args.threads
        results["eager"].append(run_bench(cfg))
        print(format_table(results["eager"][-1:]).splitlines()[-2:], flush=True)
    results["compiled"] = []
    if not (args.quick or args.no_compile):
        for cfg in compiled_cases(args.quick):
            cfg.compare, cfg.threads = ("hf",), args.threads
            results["compiled"].append(run_bench(cfg))
            print(format_table(results["compiled"][-1:]).splitlines()[-2:], flush=True)
    results["onnx"] = onnx_vs_eager(args.threads, repeats)
    results["sdpa"] = sdpa_in_fresh_processes(args.threads, repeats=5 if args.quick else 9)
    results["wall_s"] = time.perf_counter() - t0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    out.with_suffix(".md").write_text(render(results) + "\n")
    if args.readme:
        update_readme(render(results))
    print(render(results))


def update_readme(text: str, start: str = "<!-- cpu-table:start -->", end: str = "<!-- cpu-table:end -->") -> None:
    readme = HERE.parent / "docs" / "performance.md"
    body = readme.read_text()
    if start not in body or end not in body:
        sys.exit(f"README.md has no {start} ... {end} block")
    head, rest = body.split(start, 1)
    readme.write_text(head + start + "\n" + text + "\n" + end + rest.split(end, 1)[1])


if __name__ == "__main__":
    main()
