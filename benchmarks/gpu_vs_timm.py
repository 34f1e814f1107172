"""The GPU figures of the README: ViT-B/16 at 224 px, ours vs timm (and HF transformers) on one CUDA device.

    python benchmarks/gpu_vs_timm.py                       # -> benchmarks/results/gpu_vs_timm.{md,json}
    python benchmarks/gpu_vs_timm.py --batch 128 --no-compile

Needs a CUDA GPU with timm (and, for the HF rows, transformers) installed. Protocol, identical for every
implementation and timed interleaved in one process (ours, timm, ours, timm, ...):
  training   batch --batch (default 256), bf16 autocast, fused AdamW, cross-entropy, torch.compile on all or none
             (--no-compile); reported: images/s and MFU = 6 x forward FLOPs per image x images/s over the *measured*
             bf16 matmul peak of this card (8192^3), not the datasheet figure;
  inference  batch --batch, bf16 autocast, torch.compile on all (as timm's own benchmark does), eager with
             --no-compile.
Forward FLOPs come from vitlab's counter (17.56 GMACs for ViT-B/16, attention included; timm publishes 17.58).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from vitlab.bench.peak import matmul_peak, mfu
from vitlab.bench.throughput import BenchConfig, device_name, format_table, run_bench

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="vit_base_patch16_224")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps (compilation happens here)")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--hf", action="store_true", help="also compare with HF transformers")
    ap.add_argument("--out", default=str(HERE / "results" / "gpu_vs_timm"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_vs_timm.py needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = True          # the same for every implementation
    torch.backends.cudnn.allow_tf32 = True
    t0 = time.perf_counter()
    compare = ("timm", "hf") if args.hf else ("timm",)
    peak = matmul_peak("bf16", "cuda")
    results = []
    for mode in ("train", "infer"):
        cfg = BenchConfig(args.model, mode=mode, precision="bf16", batch_size=args.batch, num_classes=1000,
                          device="cuda", compare=compare, compile=not args.no_compile, warmup=args.warmup,
                          repeats=args.repeats, peak=False)
        r = run_bench(cfg)
        r["peak_flops"] = peak
        for t in r["timings"].values():
            t["mfu"] = mfu(t["images_per_s"], r["macs_per_image"], peak, mode == "train")
        results.append(r)
        print(format_table([r]), flush=True)
    env = {"gpu": device_name(torch.device("cuda")), "torch": torch.__version__,
           "bf16_matmul_peak_tflops": peak / 1e12}
    try:
        import timm

        env["timm"] = timm.__version__
    except ImportError:
        pass
    text = "\n".join([
        f"GPU: {env['gpu']}, torch {env['torch']}, timm {env.get('timm')}; measured bf16 matmul peak "
        f"{env['bf16_matmul_peak_tflops']:.0f} TFLOP/s (8192^3).",
        f"Protocol: batch {args.batch}, bf16 autocast, fused AdamW, "
        f"{'eager' if args.no_compile else 'torch.compile on every implementation'}, interleaved timing, median "
        f"of {args.repeats}.", "", format_table(results), "",
        f"Command: `python benchmarks/gpu_vs_timm.py {' '.join(sys.argv[1:])}` "
        f"({(time.perf_counter() - t0) / 60:.0f} min)."])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"environment": env, "results": results}, indent=1) + "\n")
    out.with_suffix(".md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
