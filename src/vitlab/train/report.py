"""The training run's report: curves and confusion matrix as PNG files in the run directory."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def plot_curves(history: list[dict[str, Any]], path: str | Path, metrics: tuple[str, ...] = ("val_top1",),
                primary: str = "val_top1", note: str | None = None) -> Path:
    """Left: the training loss, each named part of it (`train_<part>`) and the validation loss when there is
    one, per epoch. Right: the task's validation metrics (percent for accuracy, 0-1 for AP), `primary` bold.
    note: a line under the plots (why train loss sits above val loss: vitlab.tasks Task.loss_note)."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], label="train (total)", color="black")
    parts = [k for k in dict.fromkeys(k for h in history for k in h) if k.startswith("train_")
             and k not in ("train_loss",)]
    for k in parts:
        ax_loss.plot(epochs, [h.get(k, float("nan")) for h in history], label=k[len("train_"):], lw=1)
    if all("val_loss" in h for h in history):
        ax_loss.plot(epochs, [h["val_loss"] for h in history], label="validation", color="C3")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss and its named parts")
    ax_loss.legend(fontsize=8)
    shown = [m for m in metrics if m != "val_loss" and all(m in h for h in history)]
    for i, m in enumerate(shown):
        ax_metric.plot(epochs, [h[m] for h in history], label=m, color=f"C{i + 2}",
                       lw=2.5 if m == primary else 1.2)
    percent = primary in ("val_top1", "val_top5")
    ax_metric.set(xlabel="epoch", ylabel="percent" if percent else "value", title="Validation",
                  ylim=(0, 100) if percent else (0, 1))
    ax_metric.grid(alpha=0.3)
    if shown:
        ax_metric.legend(fontsize=8)
    for ax in (ax_loss, ax_metric):
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    if note:
        fig.subplots_adjust(bottom=0.2)
        fig.text(0.01, 0.015, note, fontsize=8, color="0.25", wrap=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_confusion(confusion: torch.Tensor, classes: list[str], path: str | Path) -> Path:
    """Confusion matrix, rows = true class, columns = predicted class, with counts."""
    c = confusion.numpy()
    n = len(classes)
    size = min(2 + 0.5 * n, 14)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(c, cmap="Blues")
    ticks = range(n)
    ax.set_xticks(ticks, classes if n <= 30 else [""] * n, rotation=90 if n > 10 else 0)
    ax.set_yticks(ticks, classes if n <= 30 else [""] * n)
    ax.set(xlabel="predicted", ylabel="true", title=f"Confusion matrix ({int(c.sum())} validation images)")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if c[i, j]:
                    ax.text(j, i, str(c[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if c[i, j] > c.max() / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_rollout(model: torch.nn.Module, val: Any, classes: list[str], path: str | Path, count: int = 4) -> Path | None:
    """Attention rollout (vitlab.explain) on `count` validation images of different classes. Returns None, with a
    log line, for models without global attention over a patch grid (CNNs, windowed attention)."""
    import logging

    from ..errors import VitlabError
    from ..explain import save_rollout_figure

    picked: dict[int, int] = {}
    for i, label in enumerate(val.labels.tolist()):
        picked.setdefault(label, i)
        if len(picked) == count:
            break
    index = list(picked.values())
    if not index:
        return None
    images = torch.stack([val[i][0] for i in index])
    try:
        return save_rollout_figure(model, images, path, classes=classes, labels=[int(val.labels[i]) for i in index])
    except VitlabError as e:
        logging.getLogger(__name__).info("report: no attention rollout for this model (%s)", e)
        return None
