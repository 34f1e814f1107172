"""Last-layer [CLS] attention per head and the masks that keep 60% of its mass (DINO Fig. 3 / Table 8 method).

    attn = last_cls_attention(model, x)           # (B, heads, gh, gw): the [CLS] row of the last block, per head
    mask = mass_mask(attn, keep=0.6)              # bool, the smallest set of top patches holding >= 60% of the mass
    j = jaccard(upsample_mask(mask, 64), gt)      # |A n B| / |A u B| per image and head

Works for any vitlab ViT/DeiT classifier and for DINO models (their teacher backbone, which the paper shows).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import VitlabError
from .recording import record_attention

MASS = 0.6


def attention_backbone(model: nn.Module) -> nn.Module:
    """The ViT whose attention is shown: a DINO model's teacher backbone, else the model itself."""
    backbone = getattr(model, "backbone", None)
    net = backbone if isinstance(backbone, nn.Module) else model
    if getattr(net, "cls_token", None) is None or not hasattr(net, "grid_size"):
        raise VitlabError(f"{type(model).__name__}: [CLS] attention needs a ViT/DeiT with a class token")
    return net


@torch.no_grad()
def last_cls_attention(model: nn.Module, x: Tensor) -> Tensor:
    """x normalised (B, 3, H, W) -> (B, heads, gh, gw): the last block's attention from [CLS] to every patch
    (prefix tokens left out; each head's row over all tokens sums to 1)."""
    net = attention_backbone(model)
    _, weights = record_attention(net, x)
    last = weights[-1]                                              # (B, heads, N, N)
    gh, gw = net.grid_size
    cls_row = last[:, :, 0, net.num_prefix_tokens:]                 # (B, heads, gh * gw)
    return cls_row.reshape(*cls_row.shape[:2], gh, gw)


def mass_mask(attn: Tensor, keep: float = MASS) -> Tensor:
    """Bool mask of the same shape: per map (the last two axes), the highest-attention patches whose summed
    attention first reaches `keep` of the map's total (the official visualize_attention rule: sort ascending,
    keep where the normalised cumulative sum exceeds 1 - keep)."""
    if not 0 < keep <= 1:
        raise VitlabError(f"mass to keep must be in (0, 1], got {keep}")
    flat = attn.flatten(-2).float()                                  # (..., P)
    values, order = flat.sort(dim=-1)                                # ascending
    values = values / values.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    kept_sorted = values.cumsum(dim=-1) > (1 - keep)
    mask = torch.zeros_like(kept_sorted).scatter(-1, order, kept_sorted)
    return mask.view(attn.shape)


def upsample_mask(mask: Tensor, size: int) -> Tensor:
    """(..., gh, gw) bool -> (..., size, size) bool, each patch covering its pixels (nearest)."""
    lead = mask.shape[:-2]
    up = F.interpolate(mask.reshape(-1, 1, *mask.shape[-2:]).float(), size=(size, size), mode="nearest")
    return up.reshape(*lead, size, size) > 0.5


def jaccard(pred: Tensor, target: Tensor) -> Tensor:
    """|pred n target| / |pred u target| over the last two axes (1 when both are empty)."""
    inter = (pred & target).flatten(-2).sum(-1).float()
    union = (pred | target).flatten(-2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


@torch.no_grad()
def attention_jaccard(model: nn.Module, images: Tensor, masks: Tensor, keep: float = MASS,
                      batch_size: int = 128) -> dict[str, float | list[float]]:
    """Jaccard between each head's 60%-mass mask and the ground-truth object masks.

    images uint8 (N, 3, S, S), masks bool (N, S, S). Returns the mean over images per head, the best head's
    (`jaccard_best_head`, the head with the highest mean), and the mean over heads (`jaccard_mean_head`)."""
    from ..data.augment import Normalize
    from ..tasks.base import mean_std

    model.eval()
    param = next(model.parameters())
    normalize = Normalize(*mean_std(model)).to(param.device)
    per_head = []
    for i in range(0, len(images), batch_size):
        x = normalize(images[i:i + batch_size].to(param.device))
        attn = last_cls_attention(model, x)                         # (b, heads, gh, gw)
        pred = upsample_mask(mass_mask(attn, keep), images.shape[-1]).cpu()
        per_head.append(jaccard(pred, masks[i:i + batch_size, None]))   # (b, heads)
    j = torch.cat(per_head).mean(dim=0)                              # (heads,)
    return {"jaccard_per_head": [round(float(v), 4) for v in j], "jaccard_best_head": float(j.max()),
            "jaccard_mean_head": float(j.mean()), "best_head": int(j.argmax())}


def plot_cls_attention(models: Sequence[tuple[str, nn.Module]], images: Tensor, path: str | Path,
                       masks: Tensor | None = None, keep: float = MASS) -> Path:
    """One row per (model, image): the image, each head's last-layer [CLS] attention, and the union of the heads'
    `keep`-mass masks over the image (with the ground-truth outline when masks (N, S, S) are given)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..data.augment import Normalize
    from ..tasks.base import mean_std

    rows = []
    for name, model in models:
        model.eval()
        device = next(model.parameters()).device
        x = Normalize(*mean_std(model)).to(device)(images.to(device))
        attn = last_cls_attention(model, x).cpu()                    # (B, heads, gh, gw)
        rows += [(name, i, attn[i], mass_mask(attn[i], keep)) for i in range(len(images))]
    heads = max(r[2].shape[0] for r in rows)
    S = images.shape[-1]
    fig, axes = plt.subplots(len(rows), heads + 2, figsize=(1.6 * (heads + 2), 1.7 * len(rows)), squeeze=False)
    for r, (name, i, attn, mask) in enumerate(rows):
        img = images[i].permute(1, 2, 0).numpy()
        axes[r, 0].imshow(img)
        axes[r, 0].set_ylabel(name, fontsize=7)
        for h in range(heads):
            ax = axes[r, 1 + h]
            if h < attn.shape[0]:
                ax.imshow(F.interpolate(attn[h][None, None], size=(S, S), mode="nearest")[0, 0], cmap="inferno")
            if r == 0:
                ax.set_title(f"head {h + 1}", fontsize=7)
        union = upsample_mask(mask.any(dim=0), S)
        shown = img.copy()
        shown[~union.numpy()] = shown[~union.numpy()] // 4
        axes[r, -1].imshow(shown)
        if masks is not None:
            axes[r, -1].contour(masks[i].numpy(), levels=[0.5], colors="lime", linewidths=0.6)
        if r == 0:
            axes[r, -1].set_title(f"{round(keep * 100)}% mass", fontsize=7)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("last-layer [CLS] attention per head", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
