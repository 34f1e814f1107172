"""What a DETR detector attends to, as the paper draws it (Carion et al. 2020, §4.2).

    record_detr_attention(model, x)     the last encoder layer's self-attention and the last decoder layer's
                                        cross-attention, on the explicit path of just those two modules
    detected_queries(outputs, t)        which object queries detect something (score > t), with their boxes
    explain_detection(model, images)    the two figures below (+ Itti-Koch saliency) as PNGs + index.html

Fig. 6: each detected object's query attends, in the last decoder layer, to a few positions of the encoder's
feature grid (its extremities: the object's edges); drawn beside the predicted box. Fig. 3: the last encoder layer's
self-attention from a reference position already separates the instances. Attention is recorded through the
`weights` probe of the shared Attention modules (vitlab.explain.recording); the maps are the mean over heads.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor, nn

from ..errors import VitlabError
from ..io import write_json
from . import plots
from .recording import recording
from .report import ExplainOptions, ReportFigure, _Context, _saliency, model_input, write_html

log = logging.getLogger(__name__)

# Reference points of the encoder figure when an image has fewer detections than points: (y, x) fractions
FIXED_POINTS = ((0.25, 0.25), (0.25, 0.75), (0.75, 0.25), (0.75, 0.75), (0.5, 0.5))
FALLBACK_QUERIES = 3       # drawn, marked "below threshold", for an image where no query passes the threshold

# The classifier's figures and why they are not drawn for a detector
SKIPPED = (
    ("attention rollout", "it follows a [CLS] / mean-patch query through a classifier's layers; a detector's "
                          "evidence for an object is its query's cross-attention, drawn above"),
    ("[CLS] attention per layer", "DETR has no [CLS] token; each object query's attention is drawn instead"),
    ("mean attention distance", "drawn for a ViT classifier's patch grid over all its layers; here only the last "
                                "encoder layer is recorded"),
    ("per-patch logits", "DETR's class head reads decoder queries, not encoder tokens"),
    ("position embedding similarity", "DETR's positions are fixed 2-D sines, not learned"),
    ("patch-embedding filters", "drawn for a classifier ViT's linear patch embedding, not a detector's backbone"),
)


@dataclass
class DetrAttention:
    outputs: dict[str, Any]                # the model's output: logits (B, Q, C + 1), boxes (B, Q, 4), aux
    encoder: Tensor | None                 # last encoder layer's self-attention (B, heads, h*w, h*w); None: no encoder
    cross: Tensor                          # last decoder layer's cross-attention (B, heads, Q, h*w)
    grid: tuple[int, int]                  # (h, w) of the encoder's token grid


def is_detector(model: nn.Module) -> bool:
    """True for a DETR (its encoder, decoder and query heads are what this module draws)."""
    from ..models.detr import DETR

    return isinstance(model, DETR)


def record_detr_attention(model: nn.Module, x: Tensor) -> DetrAttention:
    """One no-grad forward of `model(x)`, x normalised (B, 3, H, W), with only the last encoder self-attention
    and the last decoder cross-attention switched to the explicit path (the backbone's attention, if any, stays
    fused); every row of the recorded weights sums to 1."""
    grid = tuple(model.feature_grid(x.shape[-2], x.shape[-1]))
    encoder = model.encoder.layers[-1].self_attn if len(model.encoder.layers) else None
    cross = model.decoder.layers[-1].cross_attn
    with recording(cross) as cross_w, torch.no_grad():
        if encoder is None:
            outputs, enc_w = model(x), []
        else:
            with recording(encoder) as enc_w:
                outputs = model(x)
    n = grid[0] * grid[1]
    if len(cross_w) != 1 or cross_w[0].shape[-1] != n or (encoder is not None and len(enc_w) != 1):
        raise VitlabError(f"{type(model).__name__}: expected one call of each recorded attention over the "
                          f"{grid[0]}x{grid[1]} feature grid")
    return DetrAttention(outputs, enc_w[0].cpu() if enc_w else None, cross_w[0].cpu(), grid)


def detected_queries(outputs: dict[str, Tensor], threshold: float, image_size: tuple[int, int],
                     max_objects: int = 8) -> list[dict[str, Any]]:
    """Per image, best first, the queries whose score > threshold (at most max_objects): `queries` (k,) int64,
    `scores` (k,), `labels` (k,), `boxes` (k, 4) xyxy in pixels of the (H, W) model input, and `below_threshold`
    False. Scores as vitlab.tasks.detection.postprocess (softmax, no-object column removed, max over classes).
    An image with no such query gets its FALLBACK_QUERIES best ones with `below_threshold` True."""
    from ..tasks.detection.boxes import box_cxcywh_to_xyxy

    H, W = image_size
    prob = outputs["logits"].float().softmax(-1)[..., :-1].cpu()                # (B, Q, C) no-object removed
    scores, labels = prob.max(-1)                                               # (B, Q) each
    boxes = box_cxcywh_to_xyxy(outputs["boxes"].float().cpu()) * torch.tensor([W, H, W, H])   # (B, Q, 4)
    found = []
    for s, lab, b in zip(scores, labels, boxes):
        order = s.argsort(descending=True, stable=True)
        kept = order[s[order] > threshold][:max_objects]
        below = len(kept) == 0
        if below:
            kept = order[:min(FALLBACK_QUERIES, max_objects)]
        found.append({"queries": kept, "scores": s[kept], "labels": lab[kept], "boxes": b[kept],
                      "below_threshold": below})
    return found


def reference_points(boxes: Tensor, image_size: tuple[int, int], grid: tuple[int, int],
                     count: int = 4) -> list[tuple[int, int]]:
    """Grid cells (row, col) for the encoder figure: the cells holding the centres of `boxes` (k, 4) xyxy in pixels
    of the (H, W) image (distinct, in order), then FIXED_POINTS, until `count` cells (fewer only if the grid has
    fewer distinct cells)."""
    (H, W), (gh, gw) = image_size, grid
    centres = [((y0 + y1) / 2 / H, (x0 + x1) / 2 / W) for x0, y0, x1, y1 in boxes.tolist()]   # (y, x) fractions
    cells: list[tuple[int, int]] = []
    for y, x in centres + list(FIXED_POINTS):
        cell = (min(gh - 1, max(0, int(y * gh))), min(gw - 1, max(0, int(x * gw))))
        if cell not in cells:
            cells.append(cell)
        if len(cells) == count:
            break
    return cells


def explain_detection(model: nn.Module, images: Tensor, out_dir: str | Path, *, classes: Sequence[str],
                      names: Sequence[str], threshold: float = 0.5, num_points: int = 4, max_objects: int = 8,
                      title: str, num_fixations: int = 5) -> dict[str, Any]:
    """Write the DETR figures for `images` (B, 3, S, S) uint8 at the model's input size into out_dir:
    cross_attention_<i>.png and encoder_attention_<i>.png per image, saliency.png, index.html and summary.json.
    Returns the summary (detections per image, figures)."""
    if not 0.0 <= threshold <= 1.0:
        raise VitlabError(f"--threshold must be in [0, 1], got {threshold}")
    if num_points < 1:
        raise VitlabError(f"the encoder figure needs at least one reference point, got {num_points}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = images.cpu()
    was_training = model.training
    model.eval()
    try:
        rec = record_detr_attention(model, model_input(model, images))
    finally:
        model.train(was_training)
    detections = detected_queries(rec.outputs, threshold, tuple(images.shape[-2:]), max_objects)
    drawn = [_image_figures(out, k, image, det, rec, classes, names[k], num_points)
             for k, (image, det) in enumerate(zip(images, detections))]
    entries = [entry for entry, _ in drawn]
    figures = _attention_figures(model, rec, [files for _, files in drawn], threshold, max_objects)
    ctx = _Context(model, images, list(names), list(classes), ExplainOptions(num_fixations=num_fixations), out,
                   torch.empty(0), None)
    figures.append(replace(_saliency(ctx), caption="Itti-Koch saliency (intensity, colour and orientation "
                                                   "conspicuity) with its first fixations: a bottom-up baseline "
                                                   "that does not depend on the model."))
    figures += [ReportFigure(None, f"{name}: classification-only ({why})") for name, why in SKIPPED]

    summary = {"threshold": threshold, "grid": list(rec.grid), "detections": entries,
               "itti_koch_fixations_yx": ctx.summary["itti_koch_fixations_yx"],
               "figures": [{"file": f.file, "caption": f.caption, **({"more": f.more} if f.more else {})}
                           for f in figures]}
    write_json(out / "summary.json", summary)
    rows = [(e["image"], ", ".join(f"{o['class']} {o['score']:.2f}" for o in e["objects"]) or
             f"none above {threshold:g} (the best queries are drawn, marked below threshold)") for e in entries]
    write_html(out / "index.html", title, figures, [], table=(("image", f"detections (score > {threshold:g})"), rows))
    log.info("explain: wrote %d DETR figures to %s", sum(f.file is not None for f in figures), out)
    return summary


def _image_figures(out: Path, k: int, image: Tensor, det: dict[str, Any], rec: DetrAttention,
                   classes: Sequence[str], name: str, num_points: int) -> tuple[dict[str, Any], list[str | None]]:
    """Image k's two PNGs. Returns (its summary entry, [cross-attention file, encoder file or None])."""
    gh, gw = rec.grid
    maps = rec.cross[k].mean(0)[det["queries"]].reshape(-1, gh, gw)              # (objects, gh, gw) head mean
    fig = figure_cross_attention(image, maps, det, classes, f"{name}: decoder cross-attention per object")
    files: list[str | None] = [plots.save_figure(fig, out / f"cross_attention_{k + 1}.png").name, None]
    objects = [] if det["below_threshold"] else [
        {"class": _name(classes, int(c)), "score": round(float(s), 4), "query": int(q),
         "box_xyxy": [round(float(v), 2) for v in b]}
        for q, s, c, b in zip(det["queries"], det["scores"], det["labels"], det["boxes"])]
    entry: dict[str, Any] = {"image": name, "objects": objects}
    if rec.encoder is not None:
        # the fallback queries (below threshold) are not objects: fixed points only
        boxes = det["boxes"][:0] if det["below_threshold"] else det["boxes"]
        cells = reference_points(boxes, tuple(image.shape[-2:]), rec.grid, num_points)
        token_maps = rec.encoder[k].mean(0).reshape(gh * gw, gh, gw)             # (hw, gh, gw) one map per query
        fig = figure_encoder_attention(image, torch.stack([token_maps[r * gw + c] for r, c in cells]), cells,
                                       rec.grid, f"{name}: encoder self-attention from reference points")
        files[1] = plots.save_figure(fig, out / f"encoder_attention_{k + 1}.png").name
        entry["reference_cells_rc"] = [list(cell) for cell in cells]
    return entry, files


def _attention_figures(model: nn.Module, rec: DetrAttention, files: list[list[str | None]], threshold: float,
                       max_objects: int) -> list[ReportFigure]:
    """The report entries of the per-image PNGs, with their captions."""
    (gh, gw), heads = rec.grid, rec.cross.shape[1]
    cross = [f[0] for f in files]
    figures = [ReportFigure(cross[0], f"Decoder cross-attention (DETR Fig. 6): for each object detected with score "
                            f"> {threshold:g} (at most {max_objects}), the attention its object query pays to each "
                            f"position of the encoder's {gh}x{gw} feature grid in the last of the "
                            f"{len(model.decoder.layers)} decoder layers, mean over {heads} heads, upsampled over "
                            "the image (each map scaled to its own range), with the predicted box; the first panel "
                            "shows all the boxes. One figure per image.", more=cross[1:])]
    if rec.encoder is None:
        return figures + [ReportFigure(None, "encoder self-attention: not applicable (the model has no encoder "
                                             "layer)")]
    encoder = [f[1] for f in files]
    return figures + [ReportFigure(encoder[0], f"Encoder self-attention (DETR Fig. 3): in the last of the "
                                   f"{len(model.encoder.layers)} encoder layers, the attention from a few reference "
                                   "positions (marked +: the centres of the detected boxes, then fixed points) to "
                                   f"every position of the {gh}x{gw} grid, mean over {heads} heads, upsampled over "
                                   "the image (each map scaled to its own range). One figure per image.",
                                   more=encoder[1:])]


# --- figures -------------------------------------------------------------------------------------------------------
def figure_cross_attention(image: Tensor, maps: Tensor, det: dict[str, Any], classes: Sequence[str],
                           title: str) -> Figure:
    """image uint8 (3, H, W); maps (k, gh, gw), one per detection in `det` (boxes xyxy pixels of the image).
    Panel 0: the image with every box labelled; then per detection its attention overlay with its box."""
    from ..tasks.detection.draw import class_color, draw_detections

    k = len(maps)
    fig = plots.new_figure(2.4 * (k + 1), 2.8)
    ax = fig.add_subplot(1, k + 1, 1)
    ax.imshow(draw_detections(image, det["boxes"], det["labels"], det["scores"], classes))
    ax.set_title("below threshold: best queries" if det["below_threshold"] else f"{k} detections", fontsize=8)
    _clean(ax)
    for j in range(k):
        heat = plots.overlay(image, maps[j])
        scale = heat.shape[1] / image.shape[-1]                   # overlay enlarges small images
        x0, y0, x1, y1 = (det["boxes"][j] * scale).tolist()
        label = int(det["labels"][j])
        ax = fig.add_subplot(1, k + 1, j + 2)
        ax.imshow(heat)
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, linewidth=1.5,
                               edgecolor=np.array(class_color(label)) / 255))
        ax.set_title(f"{_name(classes, label)} {float(det['scores'][j]):.2f} (query {int(det['queries'][j])})",
                     fontsize=8)
        _clean(ax)
    fig.suptitle(title, fontsize=10)
    return fig


def figure_encoder_attention(image: Tensor, maps: Tensor, cells: Sequence[tuple[int, int]], grid: tuple[int, int],
                             title: str) -> Figure:
    """image uint8 (3, H, W); maps (p, gh, gw), the attention of the tokens at `cells` (row, col). Panel 0: the
    image with the numbered reference points; then each point's map over the image, the point marked."""
    H, W = image.shape[-2:]
    gh, gw = grid
    points = [((c + 0.5) * W / gw, (r + 0.5) * H / gh) for r, c in cells]   # pixel (x, y) of each cell's centre
    fig = plots.new_figure(2.4 * (len(cells) + 1), 2.8)
    ax = fig.add_subplot(1, len(cells) + 1, 1)
    ax.imshow(plots.image_hwc(image))
    for n, (x, y) in enumerate(points):
        ax.plot(x - 0.5, y - 0.5, "+", color="red", markersize=10, markeredgewidth=2)
        ax.annotate(str(n + 1), (x - 0.5, y - 0.5), color="yellow", fontsize=9, xytext=(4, 4),
                    textcoords="offset points")
    ax.set_title("reference points", fontsize=8)
    _clean(ax)
    for n, ((x, y), (r, c)) in enumerate(zip(points, cells)):
        heat = plots.overlay(image, maps[n])
        scale = heat.shape[1] / W
        ax = fig.add_subplot(1, len(cells) + 1, n + 2)
        ax.imshow(heat)
        ax.plot(x * scale - 0.5, y * scale - 0.5, "+", color="white", markersize=10, markeredgewidth=2)
        ax.set_title(f"point {n + 1} (row {r}, col {c})", fontsize=8)
        _clean(ax)
    fig.suptitle(title, fontsize=10)
    return fig


def _clean(ax: Any) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _name(classes: Sequence[str], k: int) -> str:
    return classes[k] if 0 <= k < len(classes) else str(k)


# --- images ----------------------------------------------------------------------------------------------------------
def gather_detection_images(paths: Sequence[str | Path], size: int, data: str | None = None,
                            samples: int = 4) -> tuple[Tensor, list[str], list[str] | None]:
    """Image files squashed to size x size (as DETR trains and `vitlab predict` detects), then `samples`
    validation images of a detection data spec spread evenly over the set: (uint8 (B, 3, S, S), names, the
    data's class names or None)."""
    from PIL import Image

    from ..data.decode import decode_image
    from ..data.detection import build_detection_data

    images, names, data_classes = [], [], None
    for p in paths:
        img = decode_image(p).resize((size, size), Image.Resampling.BILINEAR)
        images.append(torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1))  # (3, S, S)
        names.append(Path(p).name)
    if data is not None:
        if samples < 1:
            raise VitlabError(f"--samples must be at least 1, got {samples}")
        # scenes: val is drawn from its own seeded stream, the same whatever the train count (1 is enough here)
        val = build_detection_data(data, size, scenes_train=1).val
        data_classes = list(val.classes)
        for i in torch.linspace(0, len(val) - 1, min(samples, len(val))).round().long().tolist():
            images.append(val.images[i])
            truth = ", ".join(data_classes[int(c)] for c in val.targets[i]["labels"]) or "no objects"
            names.append(f"{data} val #{i} (true: {truth})")
    if not images:
        raise VitlabError("no images: give image files or --data SPEC")
    return torch.stack(images), names, data_classes
