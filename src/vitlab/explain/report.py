"""`explain(model, images, out_dir)`: every figure of vitlab.explain for a few images, as PNGs and an offline
index.html (images alongside, one-line captions). A figure that does not apply to the model (no [CLS] token,
windowed attention, no position embedding, no attention at all) is listed as skipped with the reason. A DETR
detector gets its own figures (vitlab.explain.detr: per-object cross-attention, encoder self-attention) instead.
"""
from __future__ import annotations

import html
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor, nn

from ..errors import VitlabError
from ..io import write_json, write_text
from ..tasks.classification import classification_logits
from . import plots
from .distance import attention_distances, patch_distances, pixel_patch_size
from .filters import patch_embedding_components, patch_embedding_weight
from .patch_logits import patch_logits
from .pos_embed import position_embedding_similarity
from .recording import attention_modules, record_attention
from .rollout import HEAD_FUSIONS, classifier_attention, rollout_map
from .saliency import itti_koch

log = logging.getLogger(__name__)


@dataclass
class ExplainOptions:
    layers: Sequence[int] | None = None    # 1-based layers whose [CLS] attention is drawn; None: default_layers
    head_fusion: str = "mean"              # rollout: how heads are fused ("mean", "max", "min")
    discard_ratio: float = 0.0             # rollout: lowest fraction of weights zeroed per layer (0 = the paper)
    target_class: int | None = None        # per-patch logits: class index (None = each image's prediction)
    num_fixations: int = 5                 # Itti-Koch: first K foci of attention
    threshold: float = 0.5                 # detection: a query whose score exceeds this is a detected object
    reference_points: int = 4              # detection: encoder self-attention is drawn from this many positions


@dataclass
class ReportFigure:
    file: str | None                       # PNG name in the report folder; None when skipped
    caption: str                           # one line; for a skipped figure, why
    more: list[str] = field(default_factory=list)   # further PNGs shown under the same caption (one per image)


@dataclass
class _Context:
    model: nn.Module
    images: Tensor                         # (B, 3, H, W) uint8
    names: list[str]
    classes: list[str]
    options: ExplainOptions
    out: Path
    probs: Tensor                          # (B, classes)
    attentions: list[Tensor] | None        # per layer (B, heads, N, N), None without Attention modules
    labels: list[int | None] = field(default_factory=list)   # true class per image; None (or absent): unknown
    rollout: Tensor | None = None          # (B, gh, gw)
    summary: dict[str, Any] = field(default_factory=dict)


def model_input(model: nn.Module, images: Tensor) -> Tensor:
    """uint8 (B, 3, H, W) -> the normalised float input the model expects (its checkpoint's or config's mean/std)."""
    meta = getattr(model, "vitlab_meta", None) or {}
    cfg = getattr(model, "cfg", None)
    mean = meta.get("mean") or getattr(cfg, "mean", (0.5, 0.5, 0.5))
    std = meta.get("std") or getattr(cfg, "std", (0.5, 0.5, 0.5))
    device = next(iter(model.parameters())).device
    x = images.to(device).float() / 255.0
    mean_t = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    return (x - mean_t) / torch.tensor(std, device=device).view(1, -1, 1, 1)


def default_layers(depth: int) -> list[int]:
    """The layers drawn by default: every one of a model of at most 6, else the first, the middle and the last."""
    if depth <= 6:
        return list(range(1, depth + 1))
    return [1, (depth + 1) // 2, depth]


def explain(model: nn.Module, images: Tensor, out_dir: str | Path, *, classes: Sequence[str] | None = None,
            names: Sequence[str] | None = None, options: ExplainOptions | None = None,
            title: str | None = None, labels: Sequence[int | None] | None = None) -> dict[str, Any]:
    """Write every figure for `images` (B, 3, H, W) uint8 at the model's input size into out_dir, with
    index.html and summary.json. `labels` (true class per image, None where unknown) mark wrong predictions.
    Returns the summary (predictions, attention distances, figures, `files`: every PNG written)."""
    options = options or ExplainOptions()
    if options.head_fusion not in HEAD_FUSIONS:
        raise VitlabError(f"head fusion must be one of {', '.join(HEAD_FUSIONS)}, got {options.head_fusion!r}")
    if images.ndim != 4 or images.shape[1] != 3 or images.dtype != torch.uint8:
        raise VitlabError(f"explain needs uint8 images (B, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    num_classes = getattr(model, "num_classes", None)
    classes = list(classes) if classes else [str(i) for i in range(num_classes or 0)]
    names = list(names) if names else [f"image {i + 1}" for i in range(len(images))]
    title = title or f"vitlab explain: {getattr(model, 'vitlab_name', type(model).__name__)}"
    from .detr import explain_detection, is_detector     # detr builds on this module: imported here

    if is_detector(model):                     # DETR: its own figures (paper Figs. 3 and 6), same report
        return explain_detection(model, images, out, classes=classes, names=names, threshold=options.threshold,
                                 num_points=options.reference_points, title=title,
                                 num_fixations=options.num_fixations)
    was_training = model.training
    model.eval()
    try:
        x = model_input(model, images)
        if attention_modules(model):
            logits, attentions = record_attention(model, x)
        else:
            with torch.no_grad():
                logits, attentions = model(x), None
        logits = classification_logits(logits)
        ctx = _Context(model, images.cpu(), names, classes, options, out, logits.float().softmax(-1).cpu(),
                       [a.cpu() for a in attentions] if attentions is not None else None,
                       list(labels) if labels is not None else [None] * len(images))
        ctx.summary["predictions"] = [
            {"image": n, "class": _class_name(ctx, int(p.argmax())), "probability": round(float(p.max()), 4),
             **({"true": _class_name(ctx, t), "correct": int(p.argmax()) == t} if t is not None else {})}
            for n, p, t in zip(names, ctx.probs, ctx.labels)]
        figures = [_figure(step, ctx) for step in (_rollout, _cls_attention, _attention_distance, _saliency,
                                                    _patch_logits, _position_embedding, _filters)]
        from .swin import is_swin, swin_figures                   # Swin: its window attention instead
        if is_swin(model) and ctx.attentions is not None:
            figures = swin_figures(ctx) + figures
    finally:
        model.train(was_training)
    ctx.summary["figures"] = [{"file": f.file, "caption": f.caption, **({"more": f.more} if f.more else {})}
                              for f in figures]
    ctx.summary["files"] = figure_files(figures)
    write_json(out / "summary.json", ctx.summary)
    write_html(out / "index.html", title, figures, ctx.summary["predictions"])
    log.info("explain: wrote %d figures to %s", len(ctx.summary["files"]), out)
    return ctx.summary


def figure_files(figures: Sequence[ReportFigure]) -> list[str]:
    """Every PNG the figures wrote (a figure with one PNG per image counts each)."""
    return [name for f in figures if f.file for name in (f.file, *f.more)]


def save_rollout_figure(model: nn.Module, images: Tensor, path: str | Path, *, classes: Sequence[str] | None = None,
                        labels: Sequence[int] | None = None, head_fusion: str = "mean",
                        discard_ratio: float = 0.0) -> Path:
    """One PNG of attention rollout on a few images (uint8 (B, 3, H, W)): image | rollout overlay, titled with
    the prediction (and the true label when given). Used by the training run's report."""
    was_training = model.training
    model.eval()
    try:
        logits, attentions = record_attention(model, model_input(model, images))
    finally:
        model.train(was_training)
    grid, prefix = _grid_and_prefix(model)
    heat = rollout_map([a.cpu() for a in attentions], grid, prefix, head_fusion, discard_ratio)
    probs = classification_logits(logits).float().softmax(-1).cpu()
    def name(k: int) -> str:
        return classes[k] if classes and k < len(classes) else str(k)

    rows = []
    for i, image in enumerate(images.cpu()):
        pred = int(probs[i].argmax())
        truth = f" (true {name(int(labels[i]))})" if labels is not None else ""
        rows.append([(plots.image_hwc(image), f"predicted {name(pred)}{truth}"),
                     (plots.overlay(image, heat[i]), "attention rollout")])
    return plots.save_figure(plots.figure_rows(images, rows, "Attention rollout (Abnar & Zuidema 2020)"), path)


# --- the figures -------------------------------------------------------------------------------------------------
def _figure(step: Callable[[_Context], ReportFigure], ctx: _Context) -> ReportFigure:
    try:
        return step(ctx)
    except VitlabError as e:                   # the figure does not apply to this model
        log.info("explain: %s skipped: %s", step.__name__.strip("_"), e)
        return ReportFigure(None, f"{step.__name__.strip('_').replace('_', ' ')}: not applicable ({e})")


def _class_name(ctx: _Context, k: int) -> str:
    return ctx.classes[k] if k < len(ctx.classes) else str(k)


def _prediction(ctx: _Context, i: int) -> tuple[str, bool]:
    """"predicted cat 93%", with "WRONG (true dog)" after it when the true class is known and differs; and
    whether it is wrong."""
    pred = int(ctx.probs[i].argmax())
    text = f"predicted {_class_name(ctx, pred)} {float(ctx.probs[i, pred]) * 100:.0f}%"
    truth = ctx.labels[i] if i < len(ctx.labels) else None
    wrong = truth is not None and truth != pred
    return (text + f" WRONG (true {_class_name(ctx, truth)})" if wrong else text), wrong


def _grid_and_prefix(model: nn.Module) -> tuple[tuple[int, int], int]:
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if grid is None:
        raise VitlabError(f"{type(model).__name__} has no patch grid")
    return tuple(grid), int(getattr(model, "num_prefix_tokens", 0))


def _global_attentions(ctx: _Context) -> tuple[list[Tensor], tuple[int, int], int]:
    """The per-layer attention over the whole patch grid, or VitlabError (no attention, or windowed)."""
    if ctx.attentions is None:
        raise VitlabError(f"{type(ctx.model).__name__} has no attention")
    grid, prefix = _grid_and_prefix(ctx.model)
    n = prefix + grid[0] * grid[1]
    if any(a.shape[0] != len(ctx.images) or a.shape[-1] != n or a.shape[-2] != n for a in ctx.attentions):
        raise VitlabError("its attention is not global over the patch grid (windowed or pooled)")
    return ctx.attentions, grid, prefix


def _rollout(ctx: _Context) -> ReportFigure:
    attn, grid, prefix = _global_attentions(ctx)
    o = ctx.options
    ctx.rollout = rollout_map(attn, grid, prefix, o.head_fusion, o.discard_ratio)
    rows = []
    for i, image in enumerate(ctx.images):
        label = f"{ctx.names[i]}\n{_prediction(ctx, i)[0]}"
        rows.append([(plots.image_hwc(image), label),
                     (plots.resize_map(ctx.rollout[i], tuple(image.shape[1:]), smooth=False), "rollout"),
                     (plots.overlay(image, ctx.rollout[i]), "overlay")])
    fig = plots.figure_rows(ctx.images, rows, f"Attention rollout ({o.head_fusion} over heads, discard ratio "
                                              f"{o.discard_ratio:g})", colorbar={"cmap": "jet"})
    plots.save_figure(fig, ctx.out / "rollout.png")
    query = "[CLS]" if prefix else "mean patch"
    return ReportFigure("rollout.png", f"Attention rollout: the {query} row of the product of per-layer (attention + "
                                 f"identity) matrices over all {len(attn)} layers, drawn over the patches.")


def _cls_attention(ctx: _Context) -> ReportFigure:
    attn, grid, prefix = _global_attentions(ctx)
    wanted = list(ctx.options.layers) if ctx.options.layers else default_layers(len(attn))
    layers = [layer for layer in wanted if 1 <= layer <= len(attn)]
    if not layers:
        raise VitlabError(f"none of layers {wanted} exists (the model has {len(attn)})")
    if len(layers) < len(wanted):
        log.info("explain: the model has %d layers; drawing layers %s", len(attn), layers)
    ctx.summary["attention_layers"] = layers
    files = []
    for i, image in enumerate(ctx.images):
        maps = torch.stack([classifier_attention(attn[layer - 1][i:i + 1], grid, prefix)[0] for layer in layers])
        query = "[CLS]" if prefix else "mean patch query"
        predicted, wrong = _prediction(ctx, i)
        fig = plots.figure_cls_attention(image, maps, layers, f"{ctx.names[i]}: {predicted}\n{query} attention per "
                                                              "layer and head", alert=wrong)
        files.append(plots.save_figure(fig, ctx.out / f"attention_layers_{i + 1}.png").name)
    ctx.summary["attention_layer_files"] = files
    query = "[CLS] token" if prefix else "mean patch query"
    return ReportFigure(files[0], f"Attention of the {query} to each patch in layers {', '.join(map(str, layers))} "
                                  f"of {len(attn)}, per head and averaged, one colour scale per layer (one figure "
                                  "per image; a wrong prediction is titled in red).", more=files[1:])


def _attention_distance(ctx: _Context) -> ReportFigure:
    attn, grid, prefix = _global_attentions(ctx)
    patch = pixel_patch_size(ctx.model)
    dist = attention_distances(attn, grid, patch, prefix)                          # (layers, heads)
    uniform = float(patch_distances(grid, patch).mean())
    ctx.summary["mean_attention_distance_px"] = [[round(float(v), 3) for v in row] for row in dist]
    ctx.summary["uniform_attention_distance_px"] = round(uniform, 3)
    fig = plots.figure_attention_distance(dist, uniform, f"Mean attention distance ({len(ctx.images)} images)")
    plots.save_figure(fig, ctx.out / "attention_distance.png")
    return ReportFigure("attention_distance.png", "Mean attention distance per head against depth (ViT Fig. 7 right): "
                                            "the attention-weighted pixel distance between patches; dashed = "
                                            "uniform attention.")


def _saliency(ctx: _Context) -> ReportFigure:
    rows = []
    fixations = []
    for i, image in enumerate(ctx.images):
        s = itti_koch(image, ctx.options.num_fixations)
        fixations.append([[round(y, 1), round(x, 1)] for y, x in s.fixations])
        row = [(_with_fixations(image, s.fixations), f"{ctx.names[i]}\nfirst {len(s.fixations)} fixations"),
               (plots.overlay(image, s.saliency), "Itti-Koch\nsaliency")]
        row += [(plots.overlay(image, s.conspicuity[k]), k) for k in ("intensity", "colour", "orientation")]
        if ctx.rollout is not None:
            row.append((plots.overlay(image, ctx.rollout[i]), "model:\nattention rollout"))
        rows.append(row)
    ctx.summary["itti_koch_fixations_yx"] = fixations
    fig = plots.figure_rows(ctx.images, rows, "Bottom-up saliency (Itti, Koch & Niebur 1998) beside the model",
                            legend=FIXATION_LEGEND)
    plots.save_figure(fig, ctx.out / "saliency.png")
    return ReportFigure("saliency.png", "Itti-Koch saliency (intensity, colour and orientation conspicuity) with "
                                        "its first fixations by winner-take-all and inhibition of return, beside "
                                        "the model's rollout.")


FIRST_FIXATION, LATER_FIXATION = (255, 0, 0), (255, 255, 0)     # RGB of the circles _with_fixations draws
FIXATION_LEGEND = [("first fixation", "circle", FIRST_FIXATION), ("later fixations, numbered in order", "circle",
                                                                     LATER_FIXATION),
                   ("scan path between them", "line", LATER_FIXATION)]


def _with_fixations(image: Tensor, fixations: list[tuple[float, float]]) -> np.ndarray:
    """The image with numbered fixation circles drawn into the pixels (so figure_rows stays a plain grid)."""
    pil = Image.fromarray((plots.image_hwc(image) * 255).round().astype("uint8"))
    scale = max(1, 256 // max(pil.size))
    pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(pil)
    r = max(pil.width, pil.height) / 24
    points = [(x * scale, y * scale) for y, x in fixations]
    if len(points) > 1:
        draw.line(points, fill=LATER_FIXATION, width=max(1, int(r / 3)))
    for k, (x, y) in enumerate(points):
        draw.ellipse([x - r, y - r, x + r, y + r], outline=FIRST_FIXATION if k == 0 else LATER_FIXATION,
                     width=max(1, int(r / 3)))
        draw.text((x + r, y - r), str(k + 1), fill=(255, 255, 255))
    return np.asarray(pil).astype("float64") / 255.0


def _patch_logits(ctx: _Context) -> ReportFigure:
    logits = patch_logits(ctx.model, model_input(ctx.model, ctx.images)).cpu()      # (B, classes, gh, gw)
    target = ctx.options.target_class
    limit = float(max(logits.abs().max(), 1e-6))
    rows = []
    for i, image in enumerate(ctx.images):
        k = target if target is not None else int(ctx.probs[i].argmax())
        heat = logits[i, k]
        rows.append([(plots.image_hwc(image), ctx.names[i]),
                     (plots.resize_map(heat, tuple(image.shape[1:]), smooth=False),
                      f"logits for class {_class_name(ctx, k)}"),
                     (plots.overlay(image, heat, cmap="RdBu_r", limits=(-limit, limit)), "overlay")])
    fig = plots.figure_rows(ctx.images, rows, "Per-patch class logits (head on every patch token)",
                            colorbar={"cmap": "RdBu_r", "vmin": -limit, "vmax": limit})
    plots.save_figure(fig, ctx.out / "patch_logits.png")
    which = f"class {_class_name(ctx, target)}" if target is not None else "each image's predicted class"
    return ReportFigure("patch_logits.png", f"Per-patch logits for {which}: the classifier head applied to every patch "
                                      "token after the final norm (red = evidence for the class).")


def _position_embedding(ctx: _Context) -> ReportFigure:
    sim = position_embedding_similarity(ctx.model)
    fig = plots.figure_position_similarity(sim, "Position embedding similarity (ViT Fig. 7 centre)")
    plots.save_figure(fig, ctx.out / "pos_embed_similarity.png")
    gh, gw = sim.shape[:2]
    return ReportFigure("pos_embed_similarity.png", f"Cosine similarity of each patch's position embedding with all "
                                              f"others: tile (r, c) of the {gh}x{gw} grid is patch (r, c)'s map.")


MIN_FILTER_SIDE = 3   # below 3x3 pixels a filter has no spatial structure to look at


def _filters(ctx: _Context) -> ReportFigure:
    patch = patch_embedding_weight(ctx.model).shape[-1]
    if patch < MIN_FILTER_SIDE:
        raise VitlabError(f"its {patch}x{patch} patches have too few pixels for a filter to show spatial structure "
                          "(the paper's figure is of 16x16 patches)")
    gray = bool((ctx.images == ctx.images[:, :1]).all())      # gray-scale input: R = G = B in every pixel
    components, explained = patch_embedding_components(ctx.model, 28, gray=gray)
    space = components[0].numel()                              # dimension of the patch space the PCA runs in
    fig = plots.figure_filters(components, explained, "Patch-embedding filters: principal components (ViT Fig. 7 "
                                                      "left)", space=space)
    plots.save_figure(fig, ctx.out / "patch_embed_filters.png")
    caption = (f"The first {len(components)} principal components of the linear patch embedding's filters, each "
               "scaled to its own range")
    if gray:
        caption += (", in gray: the inputs are gray-scale (R = G = B), so only each filter's sum over the colour "
                    "channels acts on them and its colours cannot be seen")
    else:
        caption += ", shown as RGB"
    if len(components) == space:
        caption += (f". These are all {space} directions of the {space}-dimensional patch space, so they explain "
                    "100% of the variance by construction; the figure shows which pixel patterns the embedding "
                    "weighs most, not a selection of learned features")
    return ReportFigure("patch_embed_filters.png", caption + ".")


# --- HTML ----------------------------------------------------------------------------------------------------------
def write_html(path: str | Path, title: str, figures: Sequence[ReportFigure], predictions: Sequence[dict], *,
               table: tuple[Sequence[str], Sequence[Sequence[str]]] | None = None) -> Path:
    """A self-contained page: images referenced by relative name (the PNGs lie beside it), nothing fetched.
    The table on top lists `predictions` (image, class, probability), or `table` = (header, rows) when given."""
    e = html.escape
    if table is None:
        table = (("image", "prediction", "probability"),
                 [(p["image"], str(p["class"]), f"{p['probability'] * 100:.1f}%") for p in predictions])
    header = "".join(f"<th>{e(h)}</th>" for h in table[0])
    rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in table[1])
    shown = "".join("<figure>" + "".join(f'<img src="{e(name)}" alt="{e(f.caption)}">' for name in [f.file, *f.more])
                    + f"<figcaption>{e(f.caption)}</figcaption></figure>\n" for f in figures if f.file)
    skipped = "".join(f"<li>{e(f.caption)}</li>" for f in figures if not f.file)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:1em auto;padding:0 1em}}img{{max-width:100%}}
figure{{margin:2em 0}}figcaption{{color:#333;margin-top:.4em}}td,th{{padding:.2em 1em;text-align:left}}</style>
</head><body>
<h1>{e(title)}</h1>
<table><tr>{header}</tr>{rows}</table>
{shown}{f"<h2>Not drawn</h2><ul>{skipped}</ul>" if skipped else ""}
</body></html>
"""
    write_text(path, page)
    return Path(path)
