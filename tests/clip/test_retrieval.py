"""R@k, median and mean rank: against a brute-force count, a hand example with ties, and torchmetrics."""
from __future__ import annotations

import pytest
import torch

from vitlab.errors import VitlabError
from vitlab.retrieval import bidirectional_metrics, retrieval_metrics, retrieval_ranks


def _brute_ranks(scores, positives):
    ranks = []
    for i in range(scores.shape[0]):
        order = sorted(range(scores.shape[1]), key=lambda j: (-float(scores[i, j]), j))   # stable, descending
        ranks.append(next(k for k, j in enumerate(order) if positives[i, j]) + 1)
    return torch.tensor(ranks)


def test_hand_example_with_ties():
    scores = torch.tensor([[0.9, 0.1, 0.5],      # true 0: first                       -> 1
                           [0.7, 0.2, 0.7],      # true 1: below both                  -> 3
                           [0.4, 0.6, 0.4]])     # true 2 ties with 0; 0 sorts first  -> 3
    ranks = retrieval_ranks(scores)
    assert ranks.tolist() == [1, 3, 3]
    m = retrieval_metrics(ranks, prefix="x_", ks=(1, 5))
    assert m == {"x_r1": pytest.approx(1 / 3), "x_r5": 1.0, "x_median_rank": 3.0, "x_mean_rank": pytest.approx(7 / 3)}
    # several positives: the best placed counts
    pos = torch.eye(3, dtype=torch.bool)
    pos[1, 0] = True
    assert retrieval_ranks(scores, pos).tolist() == [1, 1, 3]
    assert retrieval_metrics(torch.tensor([1, 2, 3, 10]))["median_rank"] == 2.5     # even count: mean of middle two


def test_brute_force_and_torchmetrics():
    tm = pytest.importorskip("torchmetrics.retrieval")
    torch.manual_seed(0)
    scores = torch.randn(40, 40)
    pos = torch.eye(40, dtype=torch.bool) | (torch.rand(40, 40) < 0.03)
    assert torch.equal(retrieval_ranks(scores, pos), _brute_ranks(scores, pos))
    eye = torch.eye(40, dtype=torch.bool)
    m = bidirectional_metrics(scores, eye)
    idx = torch.arange(40)[:, None].expand(40, 40)
    for k in (1, 5, 10):
        recall = tm.RetrievalRecall(top_k=k)(scores.flatten(), eye.flatten(), indexes=idx.flatten())
        assert m[f"i2t_r{k}"] == pytest.approx(float(recall), abs=1e-6)
        recall_t = tm.RetrievalRecall(top_k=k)(scores.t().flatten(), eye.flatten(), indexes=idx.flatten())
        assert m[f"t2i_r{k}"] == pytest.approx(float(recall_t), abs=1e-6)
    ranks = _brute_ranks(scores, eye).double()
    assert m["i2t_mean_rank"] == pytest.approx(float(ranks.mean()))
    assert m["i2t_median_rank"] == pytest.approx(float(ranks.median()) if len(ranks) % 2 else
                                                 float(ranks.sort().values[19:21].mean()))


def test_errors():
    with pytest.raises(VitlabError, match="1 queries have no relevant candidate"):
        retrieval_ranks(torch.zeros(2, 2), torch.tensor([[True, False], [False, False]]))
    with pytest.raises(VitlabError, match="3 queries but 2 candidates"):
        retrieval_ranks(torch.zeros(3, 2))
