"""Where a captioner looked for each word (Xu et al. 2015, Figs. 2-3): one small map per generated word over the
image, the image shown bright where the word's attention is high and dark elsewhere.

    caption_figure(images, captions, grid, path)    one PNG: per image, the image and a map per word
    explain_captions(model, inputs, out)            `vitlab explain` of a captioner: a PNG per image + index.html
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import VitlabError
from . import plots

WORDS_PER_ROW = 8


def attention_image(image: Tensor, attention: Tensor, grid: tuple[int, int], floor: float = 0.2) -> np.ndarray:
    """image uint8 (3, H, W), attention (N,) over a grid (h, w) -> (H', W', 3) in [0, 1]: the image scaled by the
    attention (bilinear, its maximum = full brightness, `floor` kept everywhere so the scene stays readable)."""
    base = plots.image_hwc(image)
    k = -(-plots.DISPLAY_SIDE // max(base.shape[:2]))
    base = base.repeat(k, axis=0).repeat(k, axis=1)
    heat = plots.resize_map(attention.float().view(grid), base.shape[:2])
    heat = np.clip(heat / max(float(heat.max()), 1e-12), 0, 1)
    return base * (floor + (1 - floor) * heat[..., None])


def caption_figure(images: Tensor, captions: Sequence[Any], grid: tuple[int, int], path: str | Path, *,
                   truth: Sequence[str] | None = None, title: str | None = None) -> Path:
    """One PNG: for each image (uint8 (B, 3, H, W)) and its Caption (text, words, attention (T, N)), the image
    titled with the generated caption (and the reference, when given), then one map per word, WORDS_PER_ROW
    maps a row."""
    blocks = [max(1, math.ceil(len(c.words) / WORDS_PER_ROW)) for c in captions]
    n_rows, n_cols = sum(blocks), WORDS_PER_ROW + 1
    fig = plots.new_figure(1.5 * n_cols, 1.6 * n_rows + 0.6)
    row = 0
    for i, (image, cap) in enumerate(zip(images, captions)):
        ax = fig.add_subplot(n_rows, n_cols, row * n_cols + 1)
        ax.imshow(plots.image_hwc(image))
        label = "\n".join(_wrap(cap.text or "(empty)", 28))
        if truth is not None:
            label += "\n(true: " + "\n".join(_wrap(truth[i], 28)) + ")"
        ax.set_title(label, fontsize=6, loc="left")
        plots._clean(ax)
        for t, word in enumerate(cap.words):
            r, c = row + t // WORDS_PER_ROW, 1 + t % WORDS_PER_ROW
            ax = fig.add_subplot(n_rows, n_cols, r * n_cols + c + 1)
            ax.imshow(attention_image(image, cap.attention[t], grid))
            ax.set_title(word, fontsize=8)
            plots._clean(ax)
        row += blocks[i]
    fig.suptitle(title or "Where each word looked (decoder attention over the image tokens, Xu et al. 2015)",
                 fontsize=9)
    return plots.save_figure(fig, path)


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + ([line] if line else [])


def explain_captions(model: nn.Module, inputs: Sequence[str], out: str | Path, *, data: str | None = None,
                     samples: int = 4) -> dict[str, Any]:
    """`vitlab explain` of a captioner: image files, then `samples` validation images of `data` (default, when no
    file is given: the data the run was trained on). Writes out/<k>_words.png per image and out/index.html;
    returns the summary with "captions", "files", "report" and "lines" (one per image for the terminal)."""
    from ..data import load_image
    from ..io import write_json
    from ..tasks.captioning import CaptionAugment, caption_tokenizer, generate_captions, grounding
    from .report import ReportFigure, write_html

    tok = caption_tokenizer(model)
    size = model.cfg.img_size
    meta = getattr(model, "vitlab_meta", None) or {}
    if not inputs and data is None:
        data = meta.get("data")
        if data is None:
            raise VitlabError("give image files or --data SPEC (the checkpoint does not name its data)")
    images = [load_image(p, size) for p in inputs]
    names = [Path(p).name for p in inputs]
    objects: list[Any] = [None] * len(images)
    truth: list[str | None] = [None] * len(images)
    if data is not None:
        from ..data.captions import build_caption_data

        if samples < 1:
            raise VitlabError(f"--samples must be at least 1, got {samples}")
        val = build_caption_data(data, size, n_train=1, n_val=max(samples, 8)).val
        for i in torch.linspace(0, len(val) - 1, min(samples, len(val))).round().long().tolist():
            images.append(val.images[i])
            names.append(f"{data} val #{i}")
            objects.append(val.objects[i] if val.objects is not None else None)
            truth.append(val.references[i][0])
    if not images:
        raise VitlabError("no images: give image files or --data SPEC")
    batch = torch.stack(images)
    device = next(model.parameters()).device
    from ..tasks.base import mean_std

    x, _ = CaptionAugment(*mean_std(model)).to(device)(batch.to(device), None)
    caps = generate_captions(model, x, tok)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figures, rows, summary_caps = [], [], []
    for k, (image, cap, name) in enumerate(zip(batch, caps, names)):
        file = f"{k + 1:02d}_words.png"
        caption_figure(image[None], [cap], model.grid_size, out / file,
                       truth=[truth[k]] if truth[k] else None, title=f"{name}: attention per generated word")
        scored = grounding(cap.words, cap.attention, objects[k], model.grid_size) if objects[k] else []
        inside = sum(s[0] for s in scored) / len(scored) if scored else None
        uniform = sum(s[1] for s in scored) / len(scored) if scored else None
        note = f"; grounding {inside:.2f} (uniform {uniform:.2f})" if inside is not None else ""
        figures.append(ReportFigure(file, f"{name}: \"{cap.text}\"{note}"))
        rows.append((name, cap.text, truth[k] or "", f"{inside:.2f} / {uniform:.2f}" if inside is not None else ""))
        summary_caps.append({"image": name, "caption": cap.text, "words": cap.words,
                             **({"truth": truth[k]} if truth[k] else {}),
                             **({"grounding": inside, "grounding_uniform": uniform} if inside is not None else {})})
    title = f"vitlab explain: {getattr(model, 'vitlab_name', type(model).__name__)} (captioning)"
    write_html(out / "index.html", title, figures, [],
               table=(("image", "caption", "reference", "grounding / uniform"), rows))
    files = [f.file for f in figures]
    summary = {"captions": summary_caps, "files": files, "report": str(out / "index.html"),
               "lines": [f"{c['image']}: {c['caption']}" for c in summary_caps]}
    write_json(out / "summary.json", summary)
    return summary
