"""`vitlab explain` of a text-video retrieval model (MMT, COLL): which frames the video embedding is read from, and
how every clip scores against every caption.

    frame_weights(model, frames)              (B, rows, T) and the rows' names: MMT, the [AGG] token's attention to
                                              each frame per layer (heads averaged); COLL / MMT max-pool, the share
                                              of the max-pooled channels each frame supplies (ties split evenly)
    plot_frame_weights(frames, weights, ...)  the frames of each clip beside its weights per frame
    plot_agg_attention(model, videos, path)   the figure of `vitlab study video-retrieval` (the first val clips)
    explain_video_text(model, inputs, out)    frame_weights.png, similarity.png + index.html, summary.json

The model has one modality (rgb frames), so there is no text-predicted mixture of experts to show: the caption
enters only through the cosine with the video embedding, drawn as the clips x captions matrix.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import VitlabError
from . import plots


@torch.no_grad()
def frame_weights(model: nn.Module, frames: Tensor) -> tuple[Tensor, list[str], str]:
    """frames (B, T, 3, S, S) normalised -> (weights (B, rows, T) summing to 1 over T, row names, what they are).
    MMT: model.agg_attention, one row per layer. Max-pool (COLL, MMT max-pool): for each frame, the fraction of the
    pooled channels whose maximum over time it holds (a tie between identical frames split evenly), one row."""
    if model.cfg.aggregation == "mmt":
        weights = model.agg_attention(frames)                                   # (B, depth, T)
        return weights, [f"layer {i + 1}" for i in range(weights.shape[1])], "[AGG] attention per frame"
    feats = model.frame_features(frames)                                        # (B, T, F)
    if model.cfg.aggregation == "mmt_maxpool":
        feats = model.feature_proj[0](feats)                                    # (B, T, dim): [AGG] = their max
    winners = (feats == feats.amax(dim=1, keepdim=True)).float()                # (B, T, channels) 1 = holds the max
    share = (winners / winners.sum(dim=1, keepdim=True)).mean(dim=2)            # (B, T): a tie split evenly
    return share.unsqueeze(1), ["max-pool"], "share of max-pooled channels per frame"


def plot_frame_weights(frames: Tensor, weights: Tensor, titles: Sequence[str], row_names: Sequence[str],
                       heading: str, path: str | Path) -> Path:
    """Per clip: its frames (uint8 (n, T, 3, S, S)), its title, and its weights (n, rows, T) per frame."""
    n, rows, T = weights.shape
    fig = plots.new_figure(1.1 * T + 2.5, 1.5 * n)
    for i in range(n):
        for t in range(T):
            ax = fig.add_subplot(n, T + 2, i * (T + 2) + t + 1)
            ax.imshow(frames[i, t].permute(1, 2, 0).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if t == 0:
                ax.set_title(titles[i], fontsize=6, loc="left")
        ax = fig.add_subplot(n, T + 2, (i * (T + 2) + T + 1, i * (T + 2) + T + 2))
        for r in range(rows):
            ax.plot(range(1, T + 1), weights[i, r].numpy(), marker="o", markersize=3, label=row_names[r])
        ax.set_ylim(0, max(0.5, float(weights[i].max()) * 1.1))
        ax.set_xticks(range(1, T + 1))
        ax.tick_params(labelsize=6)
        if i == 0:
            ax.legend(fontsize=6)
            ax.set_title(heading, fontsize=7)
    return plots.save_figure(fig, path)


def plot_agg_attention(model: nn.Module, videos: Any, path: str | Path, count: int = 4) -> Path:
    """Per clip of `videos` (a VideoSet): its frames, its caption, and the [AGG] token's attention to each frame
    per layer (heads averaged) - which moments the video embedding for retrieval is read from."""
    from ..data.augment import Normalize
    from ..tasks.base import mean_std

    count = min(count, len(videos))
    frames = videos.frames[:count]                                              # (n, T, 3, S, S) uint8
    weights, names, heading = frame_weights(model, Normalize(*mean_std(model))(frames))
    return plot_frame_weights(frames, weights, videos.captions[:count], names, heading, path)


def plot_clip_similarity(sim: Tensor, captions: Sequence[str], path: str | Path, rows: Sequence[str]) -> Path:
    """The (clips x captions) cosine matrix, each cell annotated; the true pairs on the diagonal."""
    n_clip, n_text = sim.shape
    fig = plots.new_figure(2.5 + 0.7 * n_text, 1.5 + 0.45 * n_clip)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(sim.numpy(), cmap="viridis", aspect="auto")
    ax.set_xticks(range(n_text), [_short(c) for c in captions], rotation=60, ha="right", fontsize=6)
    ax.set_yticks(range(n_clip), [_short(r, 24) for r in rows], fontsize=6)
    if n_clip * n_text <= 256:
        for i in range(n_clip):
            for t in range(n_text):
                ax.text(t, i, f"{float(sim[i, t]):.2f}", ha="center", va="center", fontsize=5, color="white")
    fig.colorbar(im, ax=ax, fraction=0.04, label="cosine")
    fig.suptitle("Cosine of each clip (rows) with each caption (columns)", fontsize=9)
    return plots.save_figure(fig, path)


def explain_video_text(model: nn.Module, inputs: Sequence[str], out: str | Path, *, data: str | None = None,
                       samples: int = 4) -> dict[str, Any]:
    """Video files (frame folders, GIFs, videos with PyAV), then `samples` val clips of `data` (default, with no
    file: the run's own data). Writes out/frame_weights.png (frame_weights per clip), similarity.png (every clip
    against the captions of the val clips, when there are any), index.html and summary.json; returns the summary
    with "files", "report" and "lines"."""
    from ..data.augment import Normalize
    from ..io import write_json
    from ..tasks.base import mean_std
    from ..tasks.video_text import similarity_matrix
    from .report import ReportFigure, write_html

    tok = getattr(model, "tokenizer", None)           # a fresh model (a registered name) has none: no cosines
    frames, names, captions = _gather(model, inputs, data, samples)
    device = next(model.parameters()).device
    normalize = Normalize(*mean_std(model)).to(device)
    was_training = model.training
    model.eval()
    try:
        weights, row_names, heading = frame_weights(model, normalize(frames.to(device)))
        sim = None
        if captions and tok is not None:
            ids, mask = tok.encode_batch(captions, truncate=True)
            sim = similarity_matrix(model, frames, ids, mask, normalize=normalize, device=device)   # (B, C)
    finally:
        model.train(was_training)
    weights = weights.cpu()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = len(names) - len(captions)                       # the video files' rows come first, uncaptioned
    titles = names[:files] + [f"{n}: {c}" for n, c in zip(names[files:], captions)]
    plot_frame_weights(frames, weights, titles, row_names, heading, out / "frame_weights.png")
    kind = model.cfg.aggregation
    figures = [ReportFigure("frame_weights.png", (
        "Per clip: the [AGG] token's attention to each frame token, per MMT layer, heads averaged."
        if kind == "mmt" else
        f"Per clip: the share of the max-pooled channels each frame supplies ({kind}: the video embedding is "
        "read from these frames; a max-pool is blind to their order)."))]
    lines = [f"{n}: {heading} ({row_names[-1]}): " + ", ".join(f"{float(w):.2f}" for w in weights[i, -1])
             for i, n in enumerate(names)]
    if sim is not None:
        plot_clip_similarity(sim, captions, out / "similarity.png", names)
        figures.append(ReportFigure("similarity.png", "Cosine of each clip (rows) with the captions of the val "
                                                      "clips shown (columns, in the order of their rows)."))
        for i, n in enumerate(names):
            best = int(sim[i].argmax())
            lines.append(f"{n}: best caption {captions[best]!r} (cosine {float(sim[i, best]):.3f})")
    else:
        why = "no tokenizer (fresh weights, not a trained run)" if captions else "no captioned clip (give --data)"
        figures.append(ReportFigure(None, f"similarity.png skipped: {why}"))
        lines.append(f"similarity.png skipped: {why}")
    table = (("clip", *[f"frame {t + 1}" for t in range(weights.shape[-1])]),
             [(n, *(f"{float(w):.3f}" for w in weights[i, -1])) for i, n in enumerate(names)])
    title = f"vitlab explain: {getattr(model, 'vitlab_name', type(model).__name__)} (text-video retrieval)"
    write_html(out / "index.html", title, figures, [], table=table)
    summary = {"clips": names, "captions": captions, "frame_weights": [[[round(float(v), 5) for v in r] for r in w]
                                                                        for w in weights],
               "rows": row_names, "similarity": None if sim is None else [[round(float(v), 5) for v in r]
                                                                          for r in sim],
               "files": [f.file for f in figures if f.file], "report": str(out / "index.html"), "lines": lines}
    write_json(out / "summary.json", summary)
    return summary


def _gather(model: nn.Module, inputs: Sequence[str], data: str | None, samples: int) -> tuple[Tensor, list[str],
                                                                                                list[str]]:
    """uint8 frames (B, T, 3, S, S) of the video files, then of `samples` val clips of `data`; the names of all
    B, and the captions of the val clips (the last len(captions) rows: a file has no caption)."""
    from ..data.videos import build_video_text_data, load_video
    from ..tasks.video_text import check_video_spec

    meta = getattr(model, "vitlab_meta", None) or {}
    size = int(model.cfg.img_size)
    T = int((meta.get("task_extras") or {}).get("num_frames") or model.cfg.num_frames)   # the frames it trained on
    clips = [load_video(Path(p), size, T) for p in inputs]
    names = [Path(p).name for p in inputs]
    if not inputs and data is None:
        data = meta.get("data")
        if data is None:
            raise VitlabError("give video files (frame folders or GIFs) or --data SPEC (the checkpoint does not "
                              "name the data it was trained on)")
    captions: list[str] = []
    if data is not None:
        check_video_spec(data, getattr(model, "vitlab_name", None))
        seed = int((meta.get("train") or {}).get("seed", 0))         # the run's seed: the val clips it was scored on
        val = build_video_text_data(data, size, seed=seed, num_frames=T).val
        for i in torch.linspace(0, len(val) - 1, min(samples, len(val))).round().long().tolist():
            clips.append(val.frames[i])
            names.append(f"{data} val #{i}")
            captions.append(val.captions[i])
    return torch.stack(clips), names, captions


def _short(text: str, width: int = 28) -> str:
    return text if len(text) <= width else text[:width - 1] + "\u2026"
