"""Speed as a library user gets it: a plain Python process that imports vitlab, with none of the `vitlab`
command's settings (no allocator tuning, no OMP_WAIT_POLICY, no freeze_for_inference unless asked):

    .venv/bin/python benchmarks/library_user.py                 # -> benchmarks/results/library_user.{md,json}
    .venv/bin/python benchmarks/library_user.py --quick         # ViT-Ti only, fewer repeats

Each row is ours / HF transformers (ViTForImageClassification with our weights, SDPA attention), interleaved in one
process, batch 32, for three ways a user may run ours:
  - plain:  model = vitlab.create_model(name); model.eval(); with torch.no_grad(): model(x)
  - frozen: the same plus vitlab.freeze_for_inference(model) and torch.inference_mode() (the README's example)
  - train:  model.train(); AdamW step on cross-entropy (no freezing exists for training)
fp32 and bf16 (torch.autocast("cpu", torch.bfloat16)). The CPU model, vendor and matmul peaks are recorded, since
which GEMM library is the faster differs between CPU vendors (docs/performance.md).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import vitlab
from vitlab.bench.peak import matmul_peak
from vitlab.bench.throughput import hf_reference, time_interleaved
from vitlab.layers import cpu_kernels

HERE = Path(__file__).resolve().parent


def _autocast(precision: str) -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def infer_step(model: torch.nn.Module, x: torch.Tensor, precision: str, frozen: bool):
    """One forward as a user writes it: no_grad (plain) or inference_mode after freeze_for_inference (frozen)."""
    model.eval()
    if frozen:
        vitlab.freeze_for_inference(model)
    grad_off = torch.inference_mode if frozen else torch.no_grad

    def step() -> None:
        with grad_off(), _autocast(precision):
            model(x)
    return step


def train_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str):
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        with _autocast(precision):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def measure(name: str, way: str, precision: str, repeats: int, batch: int = 32) -> dict:
    torch.manual_seed(0)
    ours = vitlab.create_model(name)
    ref = hf_reference(ours)
    x = torch.randn(batch, 3, 224, 224)
    y = torch.randint(0, ours.cfg.num_classes, (batch,))
    if way == "train":
        steps = {"ours": train_step(ours, x, y, precision), "hf": train_step(ref, x, y, precision)}
    else:
        steps = {"ours": infer_step(ours, x, precision, frozen=way == "frozen"),
                 "hf": infer_step(ref, x, precision, frozen=False)}
    seconds = time_interleaved(steps, warmup=1, repeats=repeats)
    ms = {k: 1000 * statistics.median(v) for k, v in seconds.items()}
    return {"model": name, "way": way, "precision": precision, "batch": batch, "ms": ms, "ratio": ms["hf"] / ms["ours"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results" / "library_user"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    models = ["vit_tiny_patch16_224"] + ([] if args.quick else ["vit_base_patch16_224"])
    repeats = 3 if args.quick else 5
    peak = {p: matmul_peak(p) / 1e9 for p in ("fp32", "bf16")}
    rows = []
    for name in models:
        for way in ("plain", "frozen", "train"):
            if way == "train" and name != "vit_tiny_patch16_224":
                continue                                     # ViT-B training at batch 32: minutes per step here
            for precision in ("fp32", "bf16"):
                row = measure(name, way, precision, repeats)
                rows.append(row)
                print(f"{name} {way} {precision}: ours {row['ms']['ours']:.0f} ms, hf {row['ms']['hf']:.0f} ms, "
                      f"{row['ratio']:.2f}x", flush=True)
    env = {"cpu": platform.processor() or platform.machine(), "vendor": cpu_kernels.cpu_vendor(),
           "torch": torch.__version__, "threads": torch.get_num_threads(),
           "fp32_training_gemm": "oneDNN" if cpu_kernels.onednn_fp32_training() else "MKL (F.linear)",
           "matmul_peak_gflops": peak, "python": sys.version.split()[0]}
    result = {"command": "python benchmarks/library_user.py" + (" --quick" if args.quick else ""),
              "environment": env, "rows": rows, "wall_s": time.perf_counter() - t0}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    lines = [f"Library user's process (no CLI settings), {env['vendor'] or 'unknown vendor'}, "
             f"{env['threads']} threads, torch {env['torch']}; matmul peak {peak['fp32']:.0f} GFLOP/s fp32, "
             f"{peak['bf16']:.0f} bf16; fp32 training GEMMs: {env['fp32_training_gemm']}.", "",
             "| model | way | precision | ours (ms/batch) | HF (ms/batch) | ours / HF speed |",
             "|---|---|---|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['way']} | {r['precision']} | {r['ms']['ours']:.0f} | {r['ms']['hf']:.0f} | "
              f"{r['ratio']:.2f}x |" for r in rows]
    lines += ["", f"Command: `{result['command']}` ({result['wall_s'] / 60:.0f} min)."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
