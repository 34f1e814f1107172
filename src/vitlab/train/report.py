"""The training run's report: curves and confusion matrix as PNG files in the run directory."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def plot_curves(history: list[dict[str, Any]], path: str | Path) -> Path:
    """Loss (train, val) and validation top-1 per epoch."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], label="validation")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="Loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [h["val_top1"] for h in history], label="top-1", color="C2")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Validation accuracy", ylim=(0, 100))
    ax_acc.grid(alpha=0.3)
    fig.tight_layout()
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
