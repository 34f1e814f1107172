"""pos-embed and scaling: the quick runs' JSON, and the measures against hand computations."""
import json

import pytest
import torch

from vitlab.studies.pos_embed import grid_distance_correlation
from vitlab.studies.verdict import SMOKE_TEST


def test_grid_structure_gives_a_perfect_negative_rank_correlation():
    rows, cols = torch.meshgrid(torch.arange(3), torch.arange(3), indexing="ij")
    pos = torch.stack([rows.flatten(), cols.flatten()], 1).float()
    similarity = (-torch.cdist(pos, pos)).reshape(3, 3, 3, 3)              # similarity = minus grid distance
    assert grid_distance_correlation(similarity) == pytest.approx(-1.0)
    assert grid_distance_correlation(-similarity) == pytest.approx(1.0)


def test_pos_embed_quick(quick_all):
    out, _ = quick_all
    saved = json.loads((out / "pos-embed" / "pos_embed.json").read_text())
    assert saved["grid"] == [4, 4] and saved["claims"][0]["verdict"] == SMOKE_TEST
    run = saved["per_seed"][0]
    assert -1 <= run["trained"] <= 1 and -1 <= run["initial"] <= 1
    assert saved["claims"][0]["difference"] == pytest.approx(run["trained"] - run["initial"])
    assert (out / "pos-embed" / "pos_embed.png").is_file()


def test_scaling_quick(quick_all):
    out, _ = quick_all
    saved = json.loads((out / "scaling" / "scaling.json").read_text())
    assert set(saved["points"]) == {"ViT", "Swin", "ConvNeXt"} and saved["claims"][0]["verdict"] == SMOKE_TEST
    vit = saved["points"]["ViT"]
    assert [p["size"] for p in vit] == [16, 32] and all(p["images_per_s"][0] > 0 for p in vit)
    assert vit[1]["memory_mb"] > vit[0]["memory_mb"]              # 4x the tokens: more activation memory
    assert saved["paper_pair"] == {}                              # the 224 px models only in the full mode
