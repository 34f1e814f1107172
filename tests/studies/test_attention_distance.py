"""attention-distance: the quick run's numbers against hand computations; the verdict helpers on known values."""
import json
import math

import pytest
import torch

from vitlab.studies.attention_distance import first_layer_spread, growth, spearman
from vitlab.studies.verdict import SMOKE_TEST


def test_quick_run_measures_every_head_and_the_uniform_bound(quick_all):
    out, _ = quick_all
    saved = json.loads((out / "attention-distance" / "attention_distance.json").read_text())
    assert saved["quick"] is True and saved["img_size"] == 16 and len(saved["per_seed"]) == 1
    run = saved["per_seed"][0]
    assert run["grid"] == [4, 4] and run["patch"] == [4, 4]
    trained, initial = torch.tensor(run["trained_px"]), torch.tensor(run["initial_px"])
    assert trained.shape == initial.shape == (6, 4)                       # vit_micro: 6 blocks x 4 heads
    centres = [(4 * r, 4 * c) for r in range(4) for c in range(4)]           # uniform attention, by hand
    uniform = sum(math.dist(a, b) for a in centres for b in centres) / len(centres) ** 2
    assert saved["uniform_attention_px"] == pytest.approx(uniform, abs=1e-6)
    assert float(trained.max()) <= 4 * 3 * 2 ** 0.5 + 1e-3 and float(trained.min()) >= 0
    growth_claim, spread_claim = saved["claims"]
    assert growth_claim["verdict"] == spread_claim["verdict"] == SMOKE_TEST
    assert growth_claim["difference"] == pytest.approx(growth(trained) - growth(initial), abs=1e-2)
    assert spread_claim["difference"] == pytest.approx(first_layer_spread(trained) - first_layer_spread(initial),
                                                       abs=1e-2)
    assert [row["layer"] for row in saved["table"]] == [1, 2, 3, 4, 5, 6]


def test_growth_spread_and_rank_correlation_by_hand():
    d = torch.tensor([[1.0, 9.0], [4.0, 6.0], [8.0, 10.0]])                 # layer 1: one local, one global head
    assert growth(d) == pytest.approx(9.0 - 5.0)
    assert first_layer_spread(d) == pytest.approx(8.0)
    assert spearman([5.0, 5.5, 9.0]) == pytest.approx(1.0)
    assert spearman([9.0, 5.5, 5.0]) == pytest.approx(-1.0)
    # 1 - 6 sum d^2 / (n (n^2 - 1)) with ranks (0, 2, 1) against (0, 1, 2): 1 - 6 * 2 / 24 = 0.5
    assert spearman([1.0, 3.0, 2.0]) == pytest.approx(0.5)
