"""What each piece of vitlab's bf16 CPU path buys, in one command (docs/performance.md, "what each part buys"):

    .venv/bin/python benchmarks/cpu_ablation.py            # -> benchmarks/results/cpu_ablation.{md,json}
    .venv/bin/python benchmarks/cpu_ablation.py --quick    # fewer repeats, no ViT-B
    .venv/bin/python benchmarks/cpu_ablation.py --readme   # and put the result into docs/performance.md

Part 1, in one process, interleaved (full, without piece A, full, without piece B, ...): our model with everything
on against the same model with one piece switched off for its own steps only:
  - oneDNN Linear: fp32 GEMMs in oneDNN instead of MKL (inference and training), at inference bias and GELU in
    the GEMM epilogue -> plain F.linear (addmm) + separate GELU;
  - packed weights (inference, freeze_for_inference) -> weights reordered inside every GEMM;
  - bf16 GEMM attention -> the CPU SDPA kernel on bf16 (what HF runs).
Part 2, in two fresh processes (the allocator setting is process-wide): glibc's defaults vs freed memory kept for
reuse (vitlab.runtime.keep_freed_memory), ms per step and minor page faults per step.
Batch 32, fp32 and bf16 autocast, 2 threads, OMP_WAIT_POLICY=PASSIVE (see cpu_table.py).
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # before torch starts OpenMP

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

import vitlab.layers.cpu_kernels as cpu_kernels  # noqa: E402
from vitlab.bench.throughput import BenchConfig, build_ours, make_step, time_interleaved  # noqa: E402
from vitlab.layers import freeze_for_inference  # noqa: E402

HERE = Path(__file__).resolve().parent


@contextlib.contextmanager
def without(piece: str, model: torch.nn.Module):
    """Switch one piece off for the duration of one step."""
    if piece == "onednn_linear":
        saved, cpu_kernels._ONEDNN = cpu_kernels._ONEDNN, False
        try:
            yield
        finally:
            cpu_kernels._ONEDNN = saved
    elif piece == "packed_weights":
        freeze_for_inference(model, False)
        try:
            yield
        finally:
            freeze_for_inference(model, True)
    elif piece == "gemm_attention":
        saved_fn = cpu_kernels.bf16_on_cpu
        cpu_kernels.bf16_on_cpu = lambda q: False          # the fused path then calls SDPA
        try:
            yield
        finally:
            cpu_kernels.bf16_on_cpu = saved_fn
    else:
        raise ValueError(piece)


def ablate(name: str, mode: str, precision: str, repeats: int) -> dict:
    pieces = ["onednn_linear"] if mode == "infer" or precision == "fp32" else []   # bf16 training: nn.Linear
    pieces += ["gemm_attention"] if precision == "bf16" else []                     # fp32 attention: SDPA
    pieces += ["packed_weights"] if mode == "infer" else []
    cfg = BenchConfig(name, mode=mode, precision=precision, num_classes=100)
    x = torch.randn(32, 3, 224, 224)
    y = torch.randint(0, 100, (32,))
    steps = {}
    for variant in ["full"] + pieces:
        torch.manual_seed(0)
        model = build_ours(cfg)
        step = make_step(model, cfg, x, y)
        if variant == "full":
            steps[variant] = step
        else:
            def off(step=step, variant=variant, model=model) -> None:
                with without(variant, model):
                    step()
            steps["without " + variant] = off
    seconds = time_interleaved(steps, warmup=2, repeats=repeats)
    ms = {k: 1e3 * statistics.median(v) for k, v in seconds.items()}
    return {"model": name, "mode": mode, "precision": precision, "ms": ms,
            "speedup": {k: ms[k] / ms["full"] for k in ms if k != "full"}}


PROBE = """
import json, resource, sys, time, torch
from vitlab.runtime import keep_freed_memory
from vitlab.bench.throughput import BenchConfig, build_ours, make_step
applied = keep_freed_memory() if sys.argv[1] == "kept" else False
torch.set_num_threads({threads})
cfg = BenchConfig("vit_tiny_patch16_224", mode=sys.argv[2], precision="bf16", num_classes=100)
torch.manual_seed(0)
step = make_step(build_ours(cfg), cfg, torch.randn(32, 3, 224, 224), torch.randint(0, 100, (32,)))
for _ in range(3):
    step()
ms, faults = [], []
for _ in range({repeats}):
    f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    step()
    ms.append(1e3 * (time.perf_counter() - t0))
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
ms.sort(); faults.sort()
print(json.dumps({{"applied": applied, "ms": ms[len(ms) // 2], "faults": faults[len(faults) // 2]}}))
"""


def malloc_effect(threads: int, repeats: int) -> dict:
    """ViT-Ti bf16 steps in fresh processes, one per (setting, mode), glibc defaults vs freed memory kept; each
    pair run twice (default, kept, default, kept) and the two medians averaged."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "VITLAB_MALLOC"}
    out: dict[str, dict] = {"default": {}, "kept": {}}
    for mode in ("train", "infer"):
        runs: dict[str, list[dict]] = {"default": [], "kept": []}
        for _ in range(2):
            for setting in runs:
                done = subprocess.run([sys.executable, "-c", PROBE.format(threads=threads, repeats=repeats), setting,
                                       mode], env=env, capture_output=True, text=True, check=True)
                runs[setting].append(json.loads(done.stdout.strip().splitlines()[-1]))
        for setting, rs in runs.items():
            out[setting][mode] = {k: statistics.mean(r[k] for r in rs) for k in ("ms", "faults")}
    return out


def render(results: dict) -> str:
    lines = ["Ours with everything on vs the same model with one piece off (batch 32, "
             f"{results['threads']} threads, interleaved in one process; >1.00x: the piece makes ours faster):", "",
             "| model | mode | precision | full (ms/batch) | piece switched off | ms/batch | the piece buys |",
             "|---|---|---|---:|---|---:|---:|"]
    for r in results["ablation"]:
        for k, s in r["speedup"].items():
            lines.append(f"| {r['model']} | {r['mode']} | {r['precision']} | {r['ms']['full']:.0f} | "
                         f"{k.removeprefix('without ')} | {r['ms'][k]:.0f} | {s:.2f}x |")
    m = results["malloc"]
    lines += ["", "glibc malloc, ViT-Ti/16 bf16 batch 32, fresh processes (median ms and minor page faults per "
              "step):", "", "| step | glibc defaults | freed memory kept | speed-up |", "|---|---:|---:|---:|"]
    for mode in ("train", "infer"):
        d, k = m["default"][mode], m["kept"][mode]
        lines.append(f"| {mode} | {d['ms']:.0f} ms, {d['faults']:.0f} faults | {k['ms']:.0f} ms, "
                     f"{k['faults']:.0f} faults | {d['ms'] / k['ms']:.2f}x |")
    lines += ["", f"Command: `{results['command']}` ({results['wall_s'] / 60:.0f} min)."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="fewer repeats, ViT-Ti only")
    ap.add_argument("--out", default=str(HERE / "results" / "cpu_ablation"), help="output path without extension")
    ap.add_argument("--readme", action="store_true", help="also replace the cpu-ablation block of docs/performance.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from vitlab.runtime import keep_freed_memory

    keep_freed_memory()
    t0 = time.perf_counter()
    repeats = 3 if args.quick else 9
    ti, b = "vit_tiny_patch16_224", "vit_base_patch16_224"
    cases = [(ti, "train", "fp32"), (ti, "infer", "fp32"), (ti, "train", "bf16"), (ti, "infer", "bf16")]
    if not args.quick:
        cases.append((b, "infer", "bf16"))
    results = {"command": " ".join(["python benchmarks/cpu_ablation.py"] + sys.argv[1:]), "threads": args.threads,
               "torch": torch.__version__, "ablation": []}
    for name, mode, precision in cases:
        n = repeats if name == ti and not (mode == "train" and precision == "fp32") else max(3, repeats // 2)
        results["ablation"].append(ablate(name, mode, precision, n))
        print(results["ablation"][-1], flush=True)
    results["malloc"] = malloc_effect(args.threads, repeats)
    results["wall_s"] = time.perf_counter() - t0
    results["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    out.with_suffix(".md").write_text(render(results) + "\n")
    if args.readme:
        from cpu_table import update_readme

        update_readme(render(results), "<!-- cpu-ablation:start -->", "<!-- cpu-ablation:end -->")
    print(render(results))


if __name__ == "__main__":
    main()
