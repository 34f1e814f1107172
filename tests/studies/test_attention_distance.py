import argparse
import json
import math

import pytest
import torch

from vitlab.studies import available_studies
from vitlab.studies.attention_distance import GLOBAL_FRACTION, judge, run



def test_tiny_study_trains_and_measures(tmp_path):
    assert "attention-distance" in available_studies()
    args = argparse.Namespace(out=str(tmp_path), tiny=True, data="digits", img_size=16, vit="vit_micro_patch2_16",
                              epochs=30, checkpoint=None, reuse=False, eval_images=256, seed=0)
    res = run(args)
    assert (tmp_path / "vit" / "model.safetensors").is_file()               # trained by vitlab.train
    assert (tmp_path / "attention_distance.png").is_file()
    saved = json.loads((tmp_path / "attention_distance.json").read_text())
    assert saved["grid"] == [4, 4] and len(saved["trained_px"]) == 6 and len(saved["trained_px"][0]) == 4
    # every distance lies between 0 and the grid's diagonal (3 patches of 2px each way)
    assert all(0 <= d <= 2 * 3 * 2 ** 0.5 for row in res["trained_px"] for d in row)
    # uniform attention by hand: the mean distance between the centres of two of the 4x4 patches (2 px apart)
    centres = [(2 * r, 2 * c) for r in range(4) for c in range(4)]
    uniform = sum(math.dist(a, b) for a in centres for b in centres) / len(centres) ** 2
    assert res["uniform_attention_px"] == pytest.approx(uniform, abs=1e-3)
    # the verdicts are what the reported distances imply
    claims, trained = res["claims"], res["trained_px"]
    per_layer = [sum(row) / len(row) for row in trained]
    assert claims["mean_per_layer_px"] == pytest.approx(per_layer, abs=2e-3)
    rho = _spearman_by_hand(per_layer)
    assert claims["spearman_depth_vs_distance"] == pytest.approx(rho, abs=1e-3)
    assert claims["distance_grows_with_depth"] is (rho > 0 and per_layer[-1] > per_layer[0])
    assert claims["first_layer_has_global_head"] is (max(trained[0]) >= GLOBAL_FRACTION * uniform)
    assert claims["first_layer_max_px"] == pytest.approx(max(trained[0]), abs=1e-3)
    assert ("grows with depth: yes" in claims["summary"]) is claims["distance_grows_with_depth"]
    # reuse: the model trained above is loaded, not retrained
    again = run(argparse.Namespace(**{**vars(args), "reuse": True}))
    assert again["trained_px"] == res["trained_px"]


def _spearman_by_hand(values):
    """Spearman's rho of (layer index, value) for distinct values: 1 - 6 sum d^2 / (n (n^2 - 1))."""
    n = len(values)
    rank = {v: r for r, v in enumerate(sorted(values))}
    return 1 - 6 * sum((i - rank[v]) ** 2 for i, v in enumerate(values)) / (n * (n * n - 1))


def test_judge_signs():
    uniform = 10.0
    growing = torch.tensor([[1.0, 9.0], [4.0, 6.0], [8.0, 9.0]])             # layer 1: one local, one global head
    claims = judge(growing, torch.full((3, 2), 10.0), uniform)
    assert claims["distance_grows_with_depth"] and claims["first_layer_has_global_head"]
    assert claims["spearman_depth_vs_distance"] == pytest.approx(1.0)
    shrinking = growing.flip(0) * 0.5
    claims = judge(shrinking, torch.full((3, 2), 10.0), uniform)
    assert not claims["distance_grows_with_depth"] and not claims["first_layer_has_global_head"]
