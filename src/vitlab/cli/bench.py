"""`vitlab bench TARGET`: measurements.

    vitlab bench attention --tokens 256,1024,4096,16384 [--types full,linformer] [--out DIR]

TARGET is a dispatch key: `attention` runs the attention scaling benchmark (vitlab.bench.attention). Other targets
(model names, for throughput benchmarks) are meant to be added to `TARGETS`/`run` below by the throughput work,
sharing this one command.
"""
from __future__ import annotations

import argparse
import logging

from ..errors import VitlabError

log = logging.getLogger(__name__)


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks: attention scaling (time, peak memory) per attention type",
                       description="Benchmarks. TARGET 'attention': time and peak memory of one forward + backward "
                                   "of each attention type as the token count grows (table, plot, JSON).")
    p.add_argument("target", help="what to benchmark: 'attention'")
    a = p.add_argument_group("attention")
    a.add_argument("--tokens", type=_int_list, default=[256, 1024, 4096, 16384],
                   help="comma-separated token counts (default 256,1024,4096,16384)")
    a.add_argument("--types", type=lambda s: [t.strip() for t in s.split(",") if t.strip()], default=None,
                   help="comma-separated attention types (default: all)")
    a.add_argument("--dim", type=int, default=64, help="token width (default 64)")
    a.add_argument("--heads", type=int, default=2, help="attention heads (default 2)")
    a.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    a.add_argument("--repeats", type=int, default=3, help="timed repetitions, the fastest reported (default 3)")
    a.add_argument("--fused", action="store_true",
                   help="time the fused scaled_dot_product_attention path instead of the explicit softmax path")
    a.add_argument("--linformer-k", type=int, default=64, help="Linformer's k (default 64)")
    a.add_argument("--sr-ratio", type=int, default=2, help="kv_pool reduction r (default 2)")
    a.add_argument("--window", type=int, default=0, help="local/strided block length (default sqrt(n))")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch (default: torch's choice; 1 gives steadier timings on a busy machine)")
    p.add_argument("--out", default="runs/bench-attention", help="output directory for the JSON and the plot")
    p.set_defaults(func=run)


TARGETS = ("attention",)


def run(args: argparse.Namespace) -> dict:
    if args.target == "attention":
        return run_attention(args)
    raise VitlabError(f"unknown bench target {args.target!r} (available: {', '.join(TARGETS)})")


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
