"""What a Swin Transformer attends to: window self-attention, as the paper draws its windows (Liu et al. 2021,
Figs. 2 and 4).

    record_window_attention(model, x)   every block's (S)W-MSA weights, per window, with the block's layout
    window_of(rec, row, col)            the window holding a token, and the token's place in it
    window_map(rec, i, w, q)            one window's attention from query q, placed back on the token grid
    swin_figures(ctx)                   the report's three Swin figures (layout, a window's heads, per stage)

A Swin block attends inside M x M windows only; every other block first rolls the map by -M/2 (cyclic shift), so
its windows straddle the previous block's borders, and masks pairs of tokens that the roll brought together from
opposite borders (their weights are exactly 0). Weights are recorded through the `weights` probe of the shared
Attention (vitlab.explain.recording); a block's recording is (B * windows, heads, M*M, M*M).
"""
from __future__ import annotations

from dataclasses import dataclass

import matplotlib
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor, nn

from ..errors import VitlabError
from . import plots
from .recording import record_attention


@dataclass
class WindowRecord:
    stage: int                             # 1-based stage
    block: int                             # 1-based block number over the whole model
    grid: tuple[int, int]                  # (H, W) token grid of the stage
    window: int                            # M, tokens per window side
    shift: int                             # cyclic shift (0: regular windows)
    weights: Tensor                        # (B, windows, heads, M*M, M*M), windows row-major in the shifted map


def is_swin(model: nn.Module) -> bool:
    from ..models.swin import SwinTransformer

    return isinstance(model, SwinTransformer)


def window_modules(model: nn.Module) -> list[tuple[int, nn.Module]]:
    """(1-based stage, WindowAttention) of every block, in call order."""
    from ..models.swin import WindowAttention

    return [(s + 1, m) for s, stage in enumerate(model.layers) for m in stage.modules()
            if isinstance(m, WindowAttention)]


def window_records(model: nn.Module, attentions: list[Tensor]) -> list[WindowRecord]:
    """Pair the weights of record_attention (one (B * windows, heads, n, n) per block) with each block's layout."""
    modules = window_modules(model)
    if len(modules) != len(attentions):
        raise VitlabError(f"expected one attention call per Swin block ({len(modules)}), got {len(attentions)}")
    records = []
    for k, ((stage, m), w) in enumerate(zip(modules, attentions)):
        (H, W), M = m.grid_size, m.window_size
        windows = (H // M) * (W // M)
        records.append(WindowRecord(stage, k + 1, (H, W), M, m.shift_size,
                                    w.reshape(-1, windows, *w.shape[1:])))          # (B, windows, heads, n, n)
    return records


def record_window_attention(model: nn.Module, x: Tensor) -> tuple[Tensor, list[WindowRecord]]:
    """One no-grad forward on the explicit path: (logits, one WindowRecord per block). Rows sum to 1."""
    logits, attentions = record_attention(model, x)
    return logits, window_records(model, [a.cpu() for a in attentions])


def window_of(rec: WindowRecord, row: int, col: int) -> tuple[int, int]:
    """Token (row, col) of the original grid -> (window index, token index inside the window)."""
    (H, W), M, s = rec.grid, rec.window, rec.shift
    r, c = (row - s) % H, (col - s) % W                     # its position in the rolled map
    return (r // M) * (W // M) + c // M, (r % M) * M + c % M


def window_positions(rec: WindowRecord, w: int) -> Tensor:
    """(M*M, 2) original (row, col) of window w's tokens, row-major inside the window."""
    (H, W), M, s = rec.grid, rec.window, rec.shift
    wr, wc = divmod(w, W // M)
    ty, tx = torch.meshgrid(torch.arange(M), torch.arange(M), indexing="ij")
    return torch.stack([(wr * M + ty.flatten() + s) % H, (wc * M + tx.flatten() + s) % W], 1)


def window_map(rec: WindowRecord, image: int, w: int, query: int | None) -> Tensor:
    """(heads, H, W): window w's attention from token `query` (None: mean over its queries) to each key, placed at
    the keys' original positions; 0 outside the window."""
    weights = rec.weights[image, w]                                              # (heads, n, n)
    row = weights.mean(1) if query is None else weights[:, query]                # (heads, n)
    out = torch.zeros(weights.shape[0], *rec.grid)
    pos = window_positions(rec, w)
    out[:, pos[:, 0], pos[:, 1]] = row
    return out


def received_map(rec: WindowRecord, image: int) -> Tensor:
    """(H, W): per window, the attention each key receives, mean over queries and heads (sums to 1 per window)."""
    out = torch.zeros(rec.grid)
    for w in range(rec.weights.shape[1]):
        out += window_map(rec, image, w, None).mean(0)
    return out


def shift_regions(rec: WindowRecord) -> Tensor:
    """(H, W) region id (0..8) of each token in the rolled map, as models.swin.shifted_window_mask labels them."""
    (H, W), M, s = rec.grid, rec.window, rec.shift
    ry = (torch.arange(H) >= H - M).long() + (torch.arange(H) >= H - s).long()
    rx = (torch.arange(W) >= W - M).long() + (torch.arange(W) >= W - s).long()
    return ry[:, None] * 3 + rx[None, :]


# --- the report ------------------------------------------------------------------------------------------------------
def swin_figures(ctx) -> list:
    """The three Swin figures for a report context (vitlab.explain.report._Context) whose attentions are the
    model's window attentions. Returns their ReportFigures."""
    from .report import ReportFigure

    records = window_records(ctx.model, ctx.attentions)
    shifted = next((r for r in records if r.shift), None)
    regular = next(r for r in records if r.stage == (shifted.stage if shifted else 1) and not r.shift)
    fig = figure_window_layout(ctx.images[0], regular, shifted)
    plots.save_figure(fig, ctx.out / "swin_windows.png")
    M = regular.window
    if shifted:
        layout = ReportFigure("swin_windows.png", f"Window layout of stage {regular.stage} (Swin Figs. 2 and 4): block "
                              f"{regular.block} attends in regular {M}x{M}-token windows; block {shifted.block} shifts "
                              f"them by {shifted.shift} tokens, so its windows straddle the previous borders and "
                              "connect neighbouring windows. The shift is computed as a cyclic roll of the map: "
                              "pieces rolled in from the opposite border share a window but not a region, and the "
                              "mask (right, black = -inf, weight exactly 0) keeps them apart.")
    else:
        layout = ReportFigure("swin_windows.png", f"Window layout: {M}x{M}-token windows; no block of this model "
                              "shifts its windows (each stage's grid fits in one window).")
    chosen = records if len(records) <= 6 else [r for r in records if r.block in _first_pairs(records)]
    files = []
    for i, image in enumerate(ctx.images):
        fig = figure_window_heads(image, i, chosen, f"{ctx.names[i]}: predicted "
                                  f"{_class(ctx, int(ctx.probs[i].argmax()))}\nattention inside the window holding "
                                  "the image centre, from the centre token (+)")
        files.append(plots.save_figure(fig, ctx.out / f"swin_window_attention_{i + 1}.png").name)
    heads = ReportFigure(files[0], "Window attention per head: for blocks " + ", ".join(
        f"{r.block} ({'shifted' if r.shift else 'regular'}, stage {r.stage})" for r in chosen) + ", the attention "
        "from the token at the image centre (+) to the keys of its window, placed at the keys' positions over the "
        "image; outside the window the weight is 0 (attention stays inside windows); dashed outlines are parts of "
        "a shifted window masked off from the query. One colour scale per block. One figure per image.",
        more=files[1:])
    fig = figure_stages(ctx.images, records, ctx.names)
    plots.save_figure(fig, ctx.out / "swin_stages.png")
    stages = ReportFigure("swin_stages.png", "Per stage: for the first regular and the first shifted block of each "
                          "stage, the attention each token receives from the queries of its window (mean over "
                          "queries and heads; each window sums to 1), window borders drawn. Windows keep M x M "
                          "tokens while patch merging halves the grid, so later windows cover more of the image.")
    ctx.summary["swin_blocks"] = [{"block": r.block, "stage": r.stage, "grid": list(r.grid), "window": r.window,
                                   "shift": r.shift} for r in records]
    return [layout, heads, stages]


def _first_pairs(records: list[WindowRecord]) -> set[int]:
    out: set[int] = set()
    for stage in sorted({r.stage for r in records}):
        out.update(r.block for r in [r for r in records if r.stage == stage][:2])
    return out


def _class(ctx, k: int) -> str:
    return ctx.classes[k] if k < len(ctx.classes) else str(k)


def _background(ax, image: Tensor, grid: tuple[int, int]) -> None:
    ax.imshow(plots.image_hwc(image), extent=(0, grid[1], grid[0], 0))
    ax.set_xticks([])
    ax.set_yticks([])


def _window_lines(ax, rec: WindowRecord, offset: int, colour: str = "white") -> None:
    (H, W), M = rec.grid, rec.window
    for y in range(offset % M, H + 1, M):
        ax.axhline(y, color=colour, linewidth=1.2)
    for x in range(offset % M, W + 1, M):
        ax.axvline(x, color=colour, linewidth=1.2)


def figure_window_layout(image: Tensor, regular: WindowRecord, shifted: WindowRecord | None) -> Figure:
    """Regular windows | shifted windows (wrapped windows in one colour) | the rolled map's regions | the mask of
    the last (bottom-right) window."""
    panels = 4 if shifted else 1
    fig = plots.new_figure(2.8 * panels, 3.2)
    ax = fig.add_subplot(1, panels, 1)
    _background(ax, image, regular.grid)
    _window_lines(ax, regular, 0)
    ax.set_title(f"block {regular.block}: regular windows\n{regular.window}x{regular.window} tokens", fontsize=8)
    if not shifted:
        return fig
    (H, W), M, s = shifted.grid, shifted.window, shifted.shift
    ids = torch.zeros(H, W, dtype=torch.long)
    for w in range((H // M) * (W // M)):
        pos = window_positions(shifted, w)
        ids[pos[:, 0], pos[:, 1]] = w
    cmap = matplotlib.colormaps["tab20"]
    ax = fig.add_subplot(1, panels, 2)
    _background(ax, image, shifted.grid)
    ax.imshow(ids.numpy() % 20, cmap=cmap, vmin=0, vmax=19, alpha=0.45, extent=(0, W, H, 0), interpolation="nearest")
    _window_lines(ax, shifted, s)
    ax.set_title(f"block {shifted.block}: shifted by {s}\n(same colour = one window)", fontsize=8)
    ax = fig.add_subplot(1, panels, 3)
    rolled = torch.roll(image, shifts=(-s * image.shape[1] // H, -s * image.shape[2] // W), dims=(1, 2))
    _background(ax, rolled, shifted.grid)
    ax.imshow(shift_regions(shifted).numpy(), cmap="Set1", vmin=0, vmax=8, alpha=0.4, extent=(0, W, H, 0),
              interpolation="nearest")
    _window_lines(ax, shifted, 0)
    ax.set_title(f"cyclic shift: map rolled by -{s}\nregular windows, colours = regions", fontsize=8)
    ax = fig.add_subplot(1, panels, 4)
    from ..models.swin import shifted_window_mask

    mask = shifted_window_mask((H, W), M, s)[-1]
    ax.imshow(torch.isfinite(mask).numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xlabel("key token", fontsize=8)
    ax.set_ylabel("query token", fontsize=8)
    ax.set_title("mask of the bottom-right window\nwhite = attend, black = masked", fontsize=8)
    return fig


def _outline_window(ax, rec: WindowRecord, w: int, query: int) -> None:
    """Each token of window w outlined where it borders a non-window token; masked tokens (another region) dashed."""
    pos = window_positions(rec, w)
    regions = shift_regions(rec)
    M = rec.window
    wr, wc = divmod(w, rec.grid[1] // M)
    region = regions[wr * M:(wr + 1) * M, wc * M:(wc + 1) * M].flatten()              # (n,) in window order
    for t, (r, c) in enumerate(pos.tolist()):
        masked = bool(rec.shift) and region[t] != region[query]
        ax.add_patch(Rectangle((c, r), 1, 1, fill=False, linewidth=0.4, edgecolor="white",
                               linestyle="--" if masked else "-"))


def figure_window_heads(image: Tensor, index: int, records: list[WindowRecord], title: str) -> Figure:
    """Image `index` of the records. Rows = blocks; columns = the image with the window, each head, the head
    mean: the attention of the centre token inside its window."""
    heads = max(r.weights.shape[2] for r in records)
    fig = plots.new_figure(1.9 * (heads + 2) + 0.8, 1.9 * len(records) + 0.8)
    axes = fig.subplots(len(records), heads + 2, squeeze=False)
    for row, rec in enumerate(records):
        (H, W) = rec.grid
        w, q = window_of(rec, H // 2, W // 2)
        maps = window_map(rec, index, w, q)                                        # (heads, H, W)
        mean = maps.mean(0)
        limit = float(max(maps.max(), 1e-12))
        for col in range(heads + 2):
            ax = axes[row, col]
            if col == 0:
                _background(ax, image, rec.grid)
                _outline_window(ax, rec, w, q)
                ax.set_ylabel(f"block {rec.block} ({'shifted' if rec.shift else 'regular'})", fontsize=8)
            elif col - 1 < maps.shape[0] or col == heads + 1:
                heat = maps[col - 1] if col - 1 < maps.shape[0] else mean
                _background(ax, image, rec.grid)
                im = ax.imshow(heat.numpy(), cmap="jet", vmin=0, vmax=limit, alpha=0.6, extent=(0, W, H, 0),
                               interpolation="nearest")
                _outline_window(ax, rec, w, q)
                ax.set_title("mean" if col == heads + 1 else f"head {col}", fontsize=8)
            else:
                ax.axis("off")
                continue
            ax.plot(W // 2 + 0.5, H // 2 + 0.5, "+", color="white", markersize=8, markeredgewidth=2)
        fig.colorbar(im, ax=list(axes[row, 1:]), fraction=0.02, pad=0.01, label="weight")
    fig.suptitle(title, fontsize=10)
    return fig


def figure_stages(images: Tensor, records: list[WindowRecord], names: list[str]) -> Figure:
    """Rows = images; columns = the first regular and first shifted block of each stage: attention received."""
    chosen = [r for r in records if r.block in _first_pairs(records)]
    fig = plots.new_figure(2.2 * len(chosen) + 0.5, 2.2 * len(images) + 1.0)
    axes = fig.subplots(len(images), len(chosen), squeeze=False)
    for col, rec in enumerate(chosen):
        maps = [received_map(rec, i) for i in range(len(images))]
        limit = float(max(max(m.max() for m in maps), 1e-12))
        (H, W) = rec.grid
        for row, image in enumerate(images):
            ax = axes[row, col]
            _background(ax, image, rec.grid)
            im = ax.imshow(maps[row].numpy(), cmap="jet", vmin=0, vmax=limit, alpha=0.6, extent=(0, W, H, 0),
                           interpolation="nearest")
            _window_lines(ax, rec, rec.shift)
            if row == 0:
                kind = f"shifted by {rec.shift}" if rec.shift else "regular"
                ax.set_title(f"stage {rec.stage}, block {rec.block}\n{H}x{W} tokens, {kind}", fontsize=8)
            if col == 0:
                ax.set_ylabel(names[row][:24], fontsize=7)
        fig.colorbar(im, ax=list(axes[:, col]), location="bottom", fraction=0.04, pad=0.02)
    fig.suptitle("Window attention received per stage (mean over queries and heads)", fontsize=10)
    return fig
