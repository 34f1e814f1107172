"""Retrieval metrics shared by CLIP (image <-> text) and text-video retrieval: R@k, median rank, mean rank.

A query's rank is the 1-based position of its first relevant candidate when the candidates are sorted by score,
highest first. Ties are broken as open_clip's `get_clip_metrics` does (argsort of the scores, descending), with a
stable sort so the result does not depend on the kernel: among equal scores the lower candidate index comes first.
Several relevant candidates per query (five captions of an image, or identical captions of two images) are
allowed: `positives` marks them, and the rank is that of the best-placed one.

    ranks = retrieval_ranks(sim, positives)          # sim (Q, C), positives (Q, C) bool -> (Q,) long, 1 = top
    retrieval_metrics(ranks, prefix="val_i2t_")      # {"val_i2t_r1": ..., "val_i2t_r5", "val_i2t_r10",
                                                     #  "val_i2t_median_rank", "val_i2t_mean_rank"}

R@k is a fraction (0-1), as the lecture's table (R@5 51.3 there is in percent); median and mean ranks are in
positions, median of an even count the mean of the two middle ranks (MMT's MdR).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .errors import VitlabError

DEFAULT_KS = (1, 5, 10)


def retrieval_ranks(scores: Tensor, positives: Tensor | None = None) -> Tensor:
    """scores (Q, C) -> ranks (Q,) long, 1-based, of each query's best-placed positive candidate.

    positives (Q, C) bool; None = the diagonal (query i matches candidate i, Q <= C). A query with no positive
    candidate raises VitlabError.
    """
    if scores.dim() != 2:
        raise VitlabError(f"scores must be (queries, candidates), got shape {tuple(scores.shape)}")
    Q, C = scores.shape
    if positives is None:
        if Q > C:
            raise VitlabError(f"{Q} queries but {C} candidates: the diagonal cannot match every query")
        positives = torch.eye(Q, C, dtype=torch.bool, device=scores.device)
    if positives.shape != scores.shape:
        raise VitlabError(f"positives {tuple(positives.shape)} do not match scores {tuple(scores.shape)}")
    if not bool(positives.any(dim=1).all()):
        raise VitlabError(f"{int((~positives.any(dim=1)).sum())} queries have no relevant candidate")
    order = torch.argsort(scores.float(), dim=1, descending=True, stable=True)   # (Q, C) candidate ids, best first
    return positives.gather(1, order).int().argmax(dim=1) + 1                     # first positive's place


def retrieval_metrics(ranks: Tensor, prefix: str = "", ks: tuple[int, ...] = DEFAULT_KS) -> dict[str, float]:
    """ranks (Q,) -> {prefix r<k>: fraction of queries ranked <= k, prefix median_rank, prefix mean_rank}."""
    if ranks.numel() == 0:
        raise VitlabError("no queries to score")
    r = ranks.double()
    out = {f"{prefix}r{k}": float((r <= k).double().mean()) for k in ks}
    out[f"{prefix}median_rank"] = float(r.quantile(0.5))
    out[f"{prefix}mean_rank"] = float(r.mean())
    return out


def bidirectional_metrics(scores: Tensor, positives: Tensor | None = None, prefix: str = "",
                          ks: tuple[int, ...] = DEFAULT_KS) -> dict[str, float]:
    """Both directions of an (images or videos) x texts score matrix: `<prefix>i2t_*` (rows query the columns)
    and `<prefix>t2i_*` (columns query the rows), as retrieval_metrics names them."""
    if positives is None:
        positives = torch.eye(*scores.shape, dtype=torch.bool, device=scores.device)
    return {**retrieval_metrics(retrieval_ranks(scores, positives), f"{prefix}i2t_", ks),
            **retrieval_metrics(retrieval_ranks(scores.t(), positives.t()), f"{prefix}t2i_", ks)}
