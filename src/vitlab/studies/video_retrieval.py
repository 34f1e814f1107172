"""Study: does the multi-modal transformer's use of frame ORDER help text->video retrieval? (Gabeur et al. 2020's
ablation of the video encoder: COLL max-pool, MMT max-pool, MMT shuffled features, MMT ordered features.)

The four rows trained from the same seed on the same `videos` clips for the same epochs, batch and loss (the
bidirectional max-margin ranking loss of the paper, or InfoNCE):
  COLL max-pool      frame features max-pooled over time, a gated embedding (coll_maxpool_micro_32)
  MMT max-pool       the MMT fed the max-pooled feature as its [AGG] token only (mmt_maxpool_micro_32)
  MMT shuffled       the MMT over [AGG] + frame tokens whose order is permuted at random, in training and test
  MMT ordered        the MMT over [AGG] + frame tokens in their order (mmt_micro_32)
The clips (vitlab.data.videos) come with their time-reversed twins in the same split, captions that differ only
in the order and direction of the events: a model blind to order can at best tie a caption's clip with its twin.
Table: text->video R@1/R@5/R@10 (%), median and mean rank on the val clips, mean ± std over seeds, the lecture's
figures beside. Verdicts (vitlab.studies.verdict, paired over seeds) on "ordered MMT has a lower mean rank than
shuffled MMT" and "... than MMT max-pool". Also written: the [AGG] token's attention over frames (explain).

    vitlab study video-retrieval               # 4 rows x 3 seeds: ~11 min at 1 thread (estimated from CPU time)
    vitlab study video-retrieval --quick       # a few clips, one step per row: a smoke test (no verdict)
"""
from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..checks import float_arg, int_arg, text_arg
from ..explain.video import plot_agg_attention   # the picture `vitlab explain` draws for an MMT checkpoint too
from . import _common as common
from .verdict import compare

log = logging.getLogger(__name__)

NAME = "video-retrieval"
HELP = "COLL max-pool vs MMT max-pool vs MMT on shuffled / ordered frames, text->video R@k, MdR, MnR"
CLAIM = ("the multi-modal transformer over ordered frame features retrieves videos better (lower mean rank) than "
         "on shuffled features or max-pooled ones")
PAPER = "Gabeur et al., Multi-modal Transformer for Video Retrieval, ECCV 2020 (MSR-VTT ablation of the encoder)"

ROWS = {"COLL max-pool": ("coll_maxpool_micro_32", False), "MMT max-pool": ("mmt_maxpool_micro_32", False),
        "MMT shuffled": ("mmt_micro_32", True), "MMT ordered": ("mmt_micro_32", False)}
# the lecture's table, text->video on MSR-VTT: R@5 (%), MdR, MnR
LECTURE = {"COLL max-pool": (51.3, 5.0, 29.5), "MMT max-pool": (52.5, 5.0, 27.2), "MMT shuffled": (53.3, 5.0, 27.4),
           "MMT ordered": (54.0, 4.0, 26.7)}
METRICS = (("R@1", "r1"), ("R@5", "r5"), ("R@10", "r10"), ("MdR", "median_rank"), ("MnR", "mean_rank"))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="videos:1200", type=text_arg,
                   help="videos, videos:N (N generated training clips) or DIR[:captions.json]")
    p.add_argument("--frames", type=int_arg(at_least=2, at_most=32), default=6, help="frames per clip")
    p.add_argument("--epochs", type=int_arg(at_least=1), default=20)
    p.add_argument("--batch-size", type=int_arg(at_least=2), default=32)
    p.add_argument("--lr", type=float_arg(above=0.0), default=1e-3)
    p.add_argument("--loss", choices=("max_margin", "infonce"), default="max_margin",
                   help="the paper's bidirectional max-margin ranking loss, or symmetric InfoNCE")
    p.add_argument("--margin", type=float_arg(at_least=0.0, at_most=2.0), default=0.05,
                   help="max-margin loss margin on cosines (the paper: 0.05)")
    common.add_seed_arguments(p)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ..data.videos import build_video_text_data

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = common.seed_list(args)
    epochs = 1 if args.quick else args.epochs
    scores: dict[str, list[dict[str, float]]] = {row: [] for row in ROWS}
    seconds: dict[str, list[float]] = {row: [] for row in ROWS}
    for seed in seeds:
        data = build_video_text_data(_data_spec(args), 32, seed=seed, num_frames=args.frames)
        tok = _tokenizer(data)
        for row, (model_name, shuffled) in ROWS.items():
            t0 = time.perf_counter()
            model = train_row(model_name, data, tok, shuffled=shuffled, epochs=epochs, args=args, seed=seed)
            seconds[row].append(time.perf_counter() - t0)
            scores[row].append(evaluate(model, data.val, tok, shuffled=shuffled, seed=seed))
            log.info("video-retrieval: %s seed %d: %s", row, seed,
                     ", ".join(f"{k} {v:.3g}" for k, v in scores[row][-1].items()))
            if row == "MMT ordered" and seed == seeds[0]:
                plot_agg_attention(model, data.val, out / "video_retrieval_attention.png")
    results = summarize(scores, seconds, args, seeds, epochs, data)
    return common.finish(results, out, NAME, log=log,
                         plots={"video_retrieval.png": lambda path: plot_table(results, path)})


def _data_spec(args: argparse.Namespace) -> str:
    return "videos:16" if args.quick else args.data


def _tokenizer(data: Any) -> Any:
    from ..text.tokenizer import build_word_level

    return build_word_level(data.train.captions + data.val.captions, max_length=24)


def _normalize(frames: Tensor) -> Tensor:
    return (frames.float() / 255.0 - 0.5) / 0.5                              # the models' mean/std (0.5, 0.5)


def _shuffle(frames: Tensor, generator: torch.Generator) -> Tensor:
    """(B, T, ...) with each clip's frames in a random order of its own."""
    B, T = frames.shape[:2]
    order = torch.argsort(torch.rand(B, T, generator=generator), dim=1)      # (B, T) a permutation per clip
    return frames[torch.arange(B)[:, None], order]


def train_row(model_name: str, data: Any, tok: Any, *, shuffled: bool, epochs: int, args: argparse.Namespace,
              seed: int) -> torch.nn.Module:
    """One row: AdamW with a cosine schedule on the train clips; quick mode stops after one step."""
    from ..registry import create_model
    from ..tasks.video_text import VideoTextObjective

    torch.manual_seed(seed)              # same seed, same frame-encoder start in every row
    model = create_model(model_name, vocab_size=tok.vocab_size, num_frames=args.frames)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.01)
    n = len(data.train)
    steps = 1 if args.quick else epochs * math.ceil(n / args.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.1)
    objective = VideoTextObjective(args.loss, args.margin)     # the loss `vitlab train` uses for these models
    ids, mask = tok.encode_batch(data.train.captions)
    g = torch.Generator().manual_seed(seed + 1)
    model.train()
    step = 0
    while step < steps:
        for idx in torch.randperm(n, generator=g).split(args.batch_size):
            if len(idx) < 2 or step >= steps:
                continue
            frames = data.train.frames[idx]
            frames = _shuffle(frames, g) if shuffled else frames
            loss, _ = objective(model, _normalize(frames), (ids[idx], mask[idx]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            step += 1
    return model.eval()


@torch.no_grad()
def similarity_matrix(model: torch.nn.Module, videos: Any, tok: Any, *, shuffled: bool, seed: int,
                      batch_size: int = 128) -> Tensor:
    """(N_video, N_text) cosines of every val clip with every val caption (shuffled: a fixed permutation each)."""
    from ..tasks.video_text import similarity_matrix as cosines

    g = torch.Generator().manual_seed(seed + 2)
    frames = _shuffle(videos.frames, g) if shuffled else videos.frames
    ids, mask = tok.encode_batch(videos.captions)
    return cosines(model, frames, ids, mask, normalize=_normalize, batch_size=batch_size)


def evaluate(model: torch.nn.Module, videos: Any, tok: Any, *, shuffled: bool, seed: int) -> dict[str, float]:
    """Text->video R@1/5/10 (%), median and mean rank; identical captions count as matches of each other (the
    task's metrics, vitlab.tasks.video_text.retrieval_scores, val_t2v_*)."""
    from ..tasks.video_text import retrieval_scores

    sim = similarity_matrix(model, videos, tok, shuffled=shuffled, seed=seed)          # (V, T)
    m = retrieval_scores(sim, videos.captions, prefix="")
    return {name: m[f"t2v_{key}"] * (100.0 if key.startswith("r") and key[1:].isdigit() else 1.0)
            for name, key in METRICS}


def summarize(scores: dict[str, list[dict[str, float]]], seconds: dict[str, list[float]], args: argparse.Namespace,
              seeds: list[int], epochs: int, data: Any) -> dict[str, Any]:
    table = []
    for row in ROWS:
        cells = {name: common.summary([s[name] for s in scores[row]], 1 if name != "MnR" else 2)
                 for name, _ in METRICS}
        lecture = dict(zip(("R@5", "MdR", "MnR"), LECTURE[row]))
        table.append({"encoder": row, **{f"{k} (ours)": v["text"] for k, v in cells.items()},
                      **{f"{k} (lecture)": v for k, v in lecture.items()},
                      "train s": common.summary(seconds[row], 1)["text"],
                      "per_seed": {k: v["per_seed"] for k, v in cells.items()}})
    mnr = {row: [s["MnR"] for s in scores[row]] for row in ROWS}
    claims = [common.claim(f"MMT on ordered frames has a lower text->video mean rank than {other}", PAPER,
                           compare(mnr["MMT ordered"], mnr[other], paired=True, higher_is_claimed=False,
                                   quick=args.quick))
              for other in ("MMT shuffled", "MMT max-pool", "COLL max-pool")]
    return {"study": NAME, "quick": args.quick, "note": common.QUICK_NOTE if args.quick else None,
            "command": common.command_line(NAME, args, add_arguments), "seeds": seeds, "data": _data_spec(args),
            "frames": args.frames, "epochs": epochs, "loss": args.loss, "margin": args.margin,
            "train_clips": len(data.train), "val_clips": len(data.val), "claims": claims, "table": table,
            "lecture": {row: dict(zip(("R@5", "MdR", "MnR"), v)) for row, v in LECTURE.items()},
            "picture": "video_retrieval_attention.png"}


def plot_table(results: dict[str, Any], path: Path) -> None:
    """R@5 and MnR per row, mean ± std over seeds (bars), the lecture's values as crosses."""
    from ..explain.plots import new_figure
    from .verdict import mean_std

    fig = new_figure(9.0, 3.6)
    rows = [r["encoder"] for r in results["table"]]
    for k, (metric, label) in enumerate((("R@5", "text->video R@5 (%)"), ("MnR", "text->video mean rank"))):
        ax = fig.add_subplot(1, 2, k + 1)
        stats = [mean_std(r["per_seed"][metric]) for r in results["table"]]
        ax.bar(range(len(rows)), [m for m, _ in stats], yerr=[s or 0.0 for _, s in stats], capsize=4,
               color="tab:blue", alpha=0.8, label="ours (mean ± std)")
        ax.plot(range(len(rows)), [results["lecture"][r][metric] for r in rows], "x", color="tab:red",
                markersize=8, label="lecture (MSR-VTT)")
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(rows, fontsize=7, rotation=15)
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
    fig.suptitle(common.quick_title(f"video retrieval on {results['data']}, {len(results['seeds'])} seed(s), "
                                    f"{results['val_clips']} val clips (MSR-VTT: 1000)", results["quick"]), fontsize=9)
    common.save(fig, path)
