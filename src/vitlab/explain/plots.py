"""Pictures for vitlab.explain: heat-map overlays and the figures of the report.

matplotlib is used through Figure + the Agg canvas directly (no pyplot): no global backend switch, no window,
safe in threads and on machines without a display.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from ..io import atomic_path


DISPLAY_SIDE = 128         # overlays of smaller images are drawn at least this many pixels wide


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write a PNG atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight", dpi=fig.dpi)
    return path


def image_hwc(image: Tensor) -> np.ndarray:
    """uint8 or [0, 1] float (3, H, W) -> float (H, W, 3) in [0, 1] for imshow."""
    img = image.detach().float().cpu()
    if image.dtype == torch.uint8:
        img = img / 255.0
    return img.clamp(0, 1).permute(1, 2, 0).numpy()


def resize_map(heat: Tensor, size: tuple[int, int], smooth: bool = True) -> np.ndarray:
    """(h, w) map -> (H, W) numpy, bilinear (smooth) or nearest (one block per patch)."""
    heat = heat.detach().float().cpu()[None, None]
    if smooth:
        return F.interpolate(heat, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()
    return F.interpolate(heat, size=size, mode="nearest")[0, 0].numpy()


def overlay(image: Tensor, heat: Tensor, alpha: float = 0.55, cmap: str = "jet",
            limits: tuple[float, float] | None = None) -> np.ndarray:
    """The image with a heat map (any (h, w)) blended over it: (H, W, 3) in [0, 1]. The map is scaled to
    `limits` (vmin, vmax), by default its own min and max."""
    base = image_hwc(image)
    k = -(-DISPLAY_SIDE // max(base.shape[:2]))        # small images: enlarge (nearest) so the map can be smooth
    base = base.repeat(k, axis=0).repeat(k, axis=1)
    h = resize_map(heat, base.shape[:2])
    lo, hi = limits if limits is not None else (float(h.min()), float(h.max()))
    h = np.clip((h - lo) / max(hi - lo, 1e-12), 0, 1)
    colour = matplotlib.colormaps[cmap](h)[..., :3]
    return (1 - alpha) * base + alpha * colour


def _clean(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def figure_cls_attention(image: Tensor, maps: Tensor, layers: Sequence[int], title: str,
                         alert: bool = False) -> Figure:
    """One image: rows = layers (1-based numbers in `layers`), columns = each head and the head mean, with one
    colour scale per row (0 to the row's largest weight) and its colour bar. maps (len(layers), heads, gh, gw):
    the attention the classifier query pays to each patch. alert: the title in red (a wrong prediction)."""
    n_rows, heads = maps.shape[0], maps.shape[1]
    fig = new_figure(1.6 * (heads + 2) + 0.8, 1.6 * n_rows + 0.8)
    axes = fig.subplots(n_rows, heads + 2, squeeze=False)
    for r in range(n_rows):
        ax = axes[r, 0]
        ax.imshow(image_hwc(image))
        ax.set_ylabel(f"layer {layers[r]}")
        _clean(ax)
        limit = float(max(maps[r].max(), maps[r].mean(0).max(), 1e-12))
        for h in range(heads + 1):
            heat = maps[r, h] if h < heads else maps[r].mean(0)
            ax = axes[r, h + 1]
            ax.imshow(overlay(image, heat, limits=(0.0, limit)))
            if r == 0:
                ax.set_title(f"head {h + 1}" if h < heads else "mean", fontsize=9)
            _clean(ax)
        scale = matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(0.0, limit), cmap="jet")
        fig.colorbar(scale, ax=list(axes[r, 1:]), fraction=0.02, pad=0.01, label="weight" if r == 0 else None)
    fig.suptitle(title, fontsize=10, color="red" if alert else "black")
    return fig


def figure_rows(images: Tensor, panels: list[list[tuple[np.ndarray, str]]], title: str,
                colorbar: dict | None = None,
                legend: Sequence[tuple[str, str, tuple[int, int, int]]] | None = None) -> Figure:
    """A grid: one row per image, each panel an (H, W, 3) array (or (H, W) with `colorbar` kwargs for imshow)
    and its title. legend: (label, "circle" or "line", RGB 0-255) entries for marks drawn into the pixels."""
    n_rows, n_cols = len(panels), max(len(p) for p in panels)
    fig = new_figure(2.2 * n_cols, 2.2 * n_rows + 0.5)
    for r, row in enumerate(panels):
        for c, (array, label) in enumerate(row):
            ax = fig.add_subplot(n_rows, n_cols, r * n_cols + c + 1)
            im = ax.imshow(array, **(colorbar or {})) if array.ndim == 2 else ax.imshow(array)
            if array.ndim == 2 and colorbar is not None:
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
            ax.set_title(label, fontsize=8)
            _clean(ax)
    if legend:
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], color=tuple(c / 255 for c in rgb), label=label,
                          **({"marker": "o", "markerfacecolor": "none", "markersize": 9, "linestyle": ""}
                             if kind == "circle" else {"linewidth": 2}))
                   for label, kind, rgb in legend]
        fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8,
                   facecolor="0.5", framealpha=0.6)
    fig.suptitle(title, fontsize=10)
    return fig


def figure_attention_distance(distances: Tensor, uniform: float | None, title: str,
                              baseline: Tensor | None = None, baseline_label: str = "at initialisation") -> Figure:
    """ViT Fig. 7 right: mean attention distance (pixels) of every head against layer depth.
    distances (layers, heads); `uniform` draws the distance of uniform attention for reference; `baseline`
    (layers, heads), e.g. the untrained model, is drawn as grey crosses."""
    L, H = distances.shape
    fig = new_figure(5.0, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    colours = matplotlib.colormaps["tab10"]
    if baseline is not None:
        xs = np.repeat(np.arange(1, L + 1), baseline.shape[1])
        ax.scatter(xs, baseline.flatten().numpy(), s=14, marker="x", color="0.6", label=baseline_label)
    for h in range(H):
        ax.scatter(np.arange(1, L + 1), distances[:, h].numpy(), s=18, color=colours(h % 10), label=f"head {h + 1}")
    if uniform is not None:
        ax.axhline(uniform, color="gray", linestyle="--", linewidth=1, label="uniform attention")
    ax.set_xlabel("network depth (layer)")
    ax.set_ylabel("mean attention distance (pixels)")
    ax.set_xticks(np.arange(1, L + 1))
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7, ncol=2 if H > 6 else 1, loc="lower right")
    ax.set_title(title, fontsize=10)
    return fig


def mosaic(tiles: np.ndarray, cols: int, gap: int = 1, fill: float = np.nan) -> np.ndarray:
    """Tiles (n, h, w[, c]) -> one array with `gap` pixels of `fill` between them, `cols` per row."""
    n, h, w = tiles.shape[:3]
    rows = -(-n // cols)
    out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, *tiles.shape[3:]), fill, dtype=np.float64)
    for i in range(n):
        r, c = divmod(i, cols)
        out[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = tiles[i]
    return out


def figure_position_similarity(similarity: Tensor, title: str) -> Figure:
    """ViT Fig. 7 centre: similarity (gh, gw, gh, gw) as a gh x gw grid of small maps, one per patch."""
    gh, gw = similarity.shape[:2]
    tiles = similarity.reshape(gh * gw, gh, gw).numpy()
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")
    fig = new_figure(6.0, 5.4)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(mosaic(tiles, gw, gap=1), cmap=cmap, vmin=-1, vmax=1, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="cosine similarity")
    ax.set_xlabel("input patch column")
    ax.set_ylabel("input patch row")
    _clean(ax)
    ax.set_title(title, fontsize=10)
    return fig


def figure_filters(components: Tensor, explained: Tensor, title: str, cols: int = 7,
                   space: int | None = None) -> Figure:
    """ViT Fig. 7 left: principal components (k, C, p, p) of the patch embedding, each min-max scaled, as RGB
    (gray for C = 1). space: the dimension of the patch space; when k equals it the title says the components
    are all of it (their 100% is no finding)."""
    comps = components.float()
    lo = comps.flatten(1).amin(1).view(-1, 1, 1, 1)
    hi = comps.flatten(1).amax(1).view(-1, 1, 1, 1)
    comps = ((comps - lo) / (hi - lo).clamp_min(1e-12)).permute(0, 2, 3, 1).numpy()    # (k, p, p, C)
    if comps.shape[-1] == 1:
        comps = np.repeat(comps, 3, axis=-1)
    cols = min(cols, len(comps))
    fig = new_figure(1.0 * cols + 0.5, 1.0 * (-(-len(comps) // cols)) + 0.8)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(mosaic(comps, cols, gap=1, fill=1.0), interpolation="nearest")
    _clean(ax)
    if space is not None and len(comps) >= space:
        what = f"all {len(comps)} components of the {space}-dimensional patch space (100% by construction)"
    else:
        what = f"first {len(comps)} components explain {float(explained.sum()) * 100:.0f}% of the variance"
    ax.set_title(f"{title}\n{what}", fontsize=9)
    return fig


def figure_curves(curves: dict[str, dict[str, Any]], x_label: str, y_label: str, title: str,
                  log: bool = False, ax_fig: tuple | None = None) -> Figure:
    """Line plot of several series: curves[label] = {"x": [...], "y": [...]} with optional "color" and "style"."""
    fig, ax = ax_fig if ax_fig is not None else (None, None)
    if fig is None:
        fig = new_figure(5.0, 3.6)
        ax = fig.add_subplot(1, 1, 1)
    for label, c in curves.items():
        ax.plot(c["x"], c["y"], c.get("style", "-"), marker="o", markersize=3, label=label, color=c.get("color"))
    if log:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3, which="both" if log else "major")
    ax.legend(fontsize=7)
    return fig
