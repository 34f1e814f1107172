"""Frozen-feature evaluation protocols for any checkpoint: weighted k-NN and a linear probe (DINO §4.1).

    feats = extract_features(model, imageset, device)                      # (N, dim) [CLS] / pooled features
    top1 = knn_top1(train_feats, train_labels, val_feats, val_labels)     # k = 20, T = 0.07, as the paper
    top1 = linear_probe_top1(train_feats, train_labels, val_feats, val_labels, num_classes)
    metrics = evaluate_protocol("runs/dino", "scenes", "knn")            # {"knn_top1": ..., ...}

Features are what the model's `forward_head(forward_features(x), pre_logits=True)` gives: the [CLS] token after the
final norm for a ViT (and for DINO, the teacher's, as the paper evaluates), the pooled features otherwise. The
k-NN memory bank is the data's train split, queries its val split.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import VitlabError

log = logging.getLogger(__name__)

PROTOCOLS = ("knn", "linear")
KNN_K, KNN_T = 20, 0.07


@torch.no_grad()
def extract_features(model: nn.Module, imageset: Any, device: torch.device | str = "cpu",
                     batch_size: int = 256) -> Tensor:
    """(N, dim) float32 frozen features of every image of `imageset`, in order, on the CPU."""
    from .data import batches
    from .data.augment import Normalize
    from .tasks.base import mean_std

    if not hasattr(model, "forward_features") or not hasattr(model, "forward_head"):
        raise VitlabError(f"{type(model).__name__} has no forward_features/forward_head: no features to evaluate")
    device = torch.device(device)
    normalize = Normalize(*mean_std(model)).to(device)
    was_training = model.training
    model.eval()
    out = []
    for images, _ in batches(imageset, batch_size, shuffle=False):
        tokens = model.forward_features(normalize(images.to(device)))
        feats = model.forward_head(tokens, pre_logits=True)
        if feats.ndim != 2:
            raise VitlabError(f"{type(model).__name__}: pre-logits features are {tuple(feats.shape)}, not (B, dim)")
        out.append(feats.float().cpu())
    model.train(was_training)
    if not out:
        raise VitlabError("no images to extract features from")
    return torch.cat(out)


def knn_predict(train_feats: Tensor, train_labels: Tensor, query_feats: Tensor, num_classes: int,
                k: int = KNN_K, temperature: float = KNN_T, chunk: int = 1024) -> Tensor:
    """Weighted k-NN (Wu et al. 2018, as DINO's eval_knn): cosine similarity to the k nearest train features,
    each neighbour voting for its class with weight exp(sim / T). Returns the class scores (Q, num_classes)."""
    k = min(k, len(train_feats))
    bank = F.normalize(train_feats.float(), dim=1)                     # (N, dim)
    scores = []
    for q in F.normalize(query_feats.float(), dim=1).split(chunk):
        sims, idx = (q @ bank.T).topk(k, dim=1)                        # (Q, k)
        weights = (sims / temperature).exp()
        votes = F.one_hot(train_labels[idx], num_classes).float()      # (Q, k, C)
        scores.append((votes * weights[..., None]).sum(dim=1))         # (Q, C)
    return torch.cat(scores)


def knn_top1(train_feats: Tensor, train_labels: Tensor, val_feats: Tensor, val_labels: Tensor,
             num_classes: int | None = None, k: int = KNN_K, temperature: float = KNN_T) -> float:
    """Top-1 accuracy (percent) of the weighted k-NN classifier."""
    num_classes = num_classes or int(max(train_labels.max(), val_labels.max())) + 1
    pred = knn_predict(train_feats, train_labels, val_feats, num_classes, k, temperature).argmax(dim=1)
    return 100.0 * float((pred == val_labels).float().mean())


def linear_probe_top1(train_feats: Tensor, train_labels: Tensor, val_feats: Tensor, val_labels: Tensor,
                      num_classes: int | None = None, steps: int = 300, lr: float = 0.05,
                      weight_decay: float = 1e-4, seed: int = 0) -> float:
    """Top-1 (percent) of a linear classifier trained on frozen, standardised train features: full-batch AdamW
    with cross-entropy, a fixed number of steps and a fixed seed (deterministic)."""
    num_classes = num_classes or int(max(train_labels.max(), val_labels.max())) + 1
    mean, std = train_feats.mean(0, keepdim=True), train_feats.std(0, keepdim=True).clamp_min(1e-6)
    x, xv = (train_feats - mean) / std, (val_feats - mean) / std
    gen = torch.Generator().manual_seed(seed)
    linear = nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=gen) * 0.01)
        linear.bias.zero_()
    opt = torch.optim.AdamW(linear.parameters(), lr=lr, weight_decay=weight_decay)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(linear(x), train_labels).backward()
            opt.step()
    with torch.no_grad():
        pred = linear(xv).argmax(dim=1)
    return 100.0 * float((pred == val_labels).float().mean())


def evaluate_protocol(checkpoint: str, data: str, protocol: str, *, device: str = "auto", batch_size: int = 256,
                      seed: int = 0, k: int = KNN_K, temperature: float = KNN_T) -> dict[str, Any]:
    """`vitlab eval --protocol knn|linear`: the checkpoint's frozen features of the data's train split (memory
    bank / probe training set) and val split (queries). Returns {"knn_top1" or "linear_top1", ...}."""
    from .checkpoint import load_model
    from .data import build_data
    from .runtime import resolve_device

    if protocol not in PROTOCOLS:
        raise VitlabError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    dev = resolve_device(device)
    model = load_model(checkpoint).to(dev)
    size = getattr(getattr(model, "cfg", None), "img_size", None)
    if size is None:
        raise VitlabError(f"{checkpoint}: the model does not say its input size (cfg.img_size)")
    size = size if isinstance(size, int) else size[0]
    bundle = build_data(data, size, seed=seed)
    train_f = extract_features(model, bundle.train, dev, batch_size)
    val_f = extract_features(model, bundle.val, dev, batch_size)
    n = len(bundle.classes)
    if protocol == "knn":
        top1 = knn_top1(train_f, bundle.train.labels, val_f, bundle.val.labels, n, k, temperature)
    else:
        top1 = linear_probe_top1(train_f, bundle.train.labels, val_f, bundle.val.labels, n, seed=seed)
    return {"protocol": protocol, f"{protocol}_top1": top1, "model": getattr(model, "vitlab_name", None),
            "train_images": len(bundle.train), "val_images": len(bundle.val), "num_classes": n,
            "feature_dim": int(train_f.shape[1]), "skipped_images": len(bundle.skipped),
            **({"k": k, "temperature": temperature} if protocol == "knn" else {})}
