"""`vitlab bench TARGET`: measurements.

    vitlab bench attention --tokens 256,1024,4096,16384 [--types full,linformer] [--out DIR]

    vitlab bench vit_tiny_patch16_224 --mode train,infer --precision fp32,bf16 --compare hf [--compile] [--json F]

TARGET is a dispatch key: `attention` runs the attention scaling benchmark (vitlab.bench.attention); a registered
model name runs the throughput benchmark (vitlab.bench.throughput): images/s, latency, MFU, memory, and with
--compare the same architecture from HF transformers / timm timed interleaved in the same process.
"""
from __future__ import annotations

import argparse
import logging

from ..checks import choice_list_arg, device_arg, int_arg, int_list_arg, text_arg
from ..errors import VitlabError

log = logging.getLogger(__name__)
MODES, PRECISIONS, REFERENCES = ("train", "infer"), ("fp32", "bf16"), ("hf", "timm")
_compare_list = choice_list_arg(REFERENCES)     # --compare '' (the default) means none


def _name_list(text: str) -> list[str]:
    """--types: comma-separated names, at least one (each is checked against the attention types by the
    benchmark, which names the choices)."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"must list at least one attention type, got {text!r}")
    return names


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks: attention scaling per attention type; model throughput vs HF/timm",
                       description="Benchmarks. TARGET 'attention': time and peak memory of one forward + backward "
                                   "of each attention type as the token count grows (table, plot, JSON). "
                                   "TARGET a model name: images/s, latency, MFU and memory of training steps or "
                                   "inference, with --compare hf/timm timed interleaved in the same process.")
    p.add_argument("target", type=text_arg, help="what to benchmark: 'attention' or a model name")
    a = p.add_argument_group("attention")
    a.add_argument("--tokens", type=int_list_arg(at_least=1), default=[256, 1024, 4096, 16384],
                   help="comma-separated token counts (default 256,1024,4096,16384)")
    a.add_argument("--types", type=_name_list, default=None,
                   help="comma-separated attention types (default: all)")
    a.add_argument("--dim", type=int_arg(at_least=1), default=64, help="token width (default 64)")
    a.add_argument("--heads", type=int_arg(at_least=1), default=2, help="attention heads (default 2)")
    a.add_argument("--batch", type=int_arg(at_least=1), default=1, help="batch size (default 1)")
    a.add_argument("--repeats", type=int_arg(at_least=1), default=3,
                   help="timed repetitions, the fastest reported (default 3)")
    a.add_argument("--fused", action="store_true",
                   help="time the fused scaled_dot_product_attention path instead of the explicit softmax path")
    a.add_argument("--linformer-k", type=int_arg(at_least=1), default=64, help="Linformer's k (default 64)")
    a.add_argument("--sr-ratio", type=int_arg(at_least=1), default=2, help="kv_pool reduction r (default 2)")
    a.add_argument("--window", type=int_arg(at_least=0), default=0, help="local/strided block length (default sqrt(n))")
    m = p.add_argument_group("model throughput (TARGET = a model name, e.g. vit_tiny_patch16_224)")
    m.add_argument("--mode", type=choice_list_arg(MODES), default="infer",
                   help="train, infer or train,infer (default infer)")
    m.add_argument("--precision", type=choice_list_arg(PRECISIONS), default="fp32",
                   help="fp32, bf16 or fp32,bf16 (default fp32)")
    m.add_argument("--batch-size", type=int_arg(at_least=1), default=32, help="images per step (default 32)")
    m.add_argument("--img-size", type=int_arg(at_least=1), default=None, help="input side (default: the model's)")
    m.add_argument("--num-classes", type=int_arg(at_least=1), default=100, help="classifier outputs (default 100)")
    m.add_argument("--compare", type=_compare_list, default=[],
                   help="reference implementations run in the same process, "
                                                 "interleaved: hf, timm or hf,timm")
    m.add_argument("--compile", action="store_true",
                   help="torch.compile every implementation (inference: with freezing)")
    m.add_argument("--compile-ours-only", action="store_true",
                   help="torch.compile ours, run the references eagerly (as they ship)")
    m.add_argument("--channels-last", action="store_true", help="NHWC input and weights")
    m.add_argument("--warmup", type=int_arg(at_least=0), default=2, help="untimed steps per implementation (default 2)")
    m.add_argument("--no-peak", action="store_true", help="skip the matmul peak measurement (no MFU)")
    m.add_argument("--json", default=None, type=text_arg, help="also write the results to this JSON file")
    p.add_argument("--device", type=device_arg, default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int_arg(at_least=0), default=0,
                   help="CPU threads for torch (default: torch's choice; 1 gives steadier timings on a busy machine)")
    p.add_argument("--out", default="runs/bench-attention", type=text_arg,
                   help="output directory for the JSON and the plot")
    p.set_defaults(func=run)


TARGETS = ("attention",)


def run(args: argparse.Namespace) -> dict:
    if args.target == "attention":
        return run_attention(args)
    from ..registry import list_models

    if args.target in list_models():
        return run_throughput(args)
    raise VitlabError(f"unknown bench target {args.target!r} (available: {', '.join(TARGETS)} or a model name)")


def run_throughput(args: argparse.Namespace) -> dict:
    """Throughput of a model, ours and the --compare references, for each mode x precision asked."""
    from ..bench.throughput import BenchConfig, format_table, run_bench
    from ..io import write_json

    results = []
    for mode in args.mode:
        for precision in args.precision:
            cfg = BenchConfig(args.target, mode=mode, precision=precision, batch_size=args.batch_size,
                              img_size=args.img_size, num_classes=args.num_classes, device=args.device,
                              compare=tuple(args.compare), compile=args.compile or args.compile_ours_only,
                              compile_references=False if args.compile_ours_only else None,
                              channels_last=args.channels_last, warmup=args.warmup, repeats=args.repeats,
                              threads=args.threads or None, peak=not args.no_peak)
            results.append(run_bench(cfg))
    print(format_table(results))
    if args.json:
        write_json(args.json, {"results": results})
        print(f"wrote {args.json}")
    return {"results": results}


def run_attention(args: argparse.Namespace) -> dict:
    import torch

    from ..bench.attention import bench_attention, format_table, write_attention_report

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = {"dim": args.dim, "heads": args.heads, "batch": args.batch, "repeats": args.repeats,
                "fused": args.fused, "linformer_k": args.linformer_k, "sr_ratio": args.sr_ratio,
                "window": args.window, "device": args.device,
                "threads": torch.get_num_threads()}
    results = bench_attention(args.types, args.tokens, dim=args.dim, heads=args.heads, batch=args.batch,
                              fused=args.fused, repeats=args.repeats, device=args.device,
                              linformer_k=args.linformer_k, sr_ratio=args.sr_ratio, window=args.window)
    print(format_table(results))
    paths = write_attention_report(results, args.out, settings)
    print(f"wrote {paths['json']} and {paths['plot']}")
    return {"results": results, **{k: str(v) for k, v in paths.items()}}
