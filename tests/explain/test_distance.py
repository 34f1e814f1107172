import itertools
import math

import pytest
import torch

from vitlab.errors import VitlabError
from vitlab.explain import attention_distances, attention_maps, mean_attention_distance


def brute_mean_distance(gh, gw, patch):
    """Mean Euclidean distance between two patch centres drawn uniformly (with replacement) from the grid."""
    cells = list(itertools.product(range(gh), range(gw)))
    total = sum(math.dist(a, b) for a in cells for b in cells)
    return patch * total / len(cells) ** 2


def uniform(B, heads, n):
    return torch.full((B, heads, n, n), 1.0 / n)


def test_uniform_attention_on_2x2_grid_is_analytic():
    # From any patch of a 2x2 grid: distances 0, 1, 1, sqrt(2) patches -> mean (2 + sqrt 2) / 4.
    got = mean_attention_distance(uniform(1, 3, 4), (2, 2), patch_size=16, num_prefix_tokens=0)
    torch.testing.assert_close(got, torch.full((3,), 16 * (2 + math.sqrt(2)) / 4))


@pytest.mark.parametrize("grid", [(3, 3), (4, 5)])
def test_uniform_attention_matches_brute_force(grid):
    gh, gw = grid
    n = 1 + gh * gw                                   # with a [CLS] token: its weight is dropped and renormalised
    got = mean_attention_distance(uniform(2, 2, n), grid, patch_size=8, num_prefix_tokens=1)
    torch.testing.assert_close(got, torch.full((2,), brute_mean_distance(gh, gw, 8)), rtol=1e-6, atol=1e-6)


def test_identity_attention_is_zero():
    eye = torch.eye(17).expand(2, 3, 17, 17)
    torch.testing.assert_close(mean_attention_distance(eye, (4, 4), 4), torch.zeros(3))


def test_attention_to_one_patch():
    # Every query attends to patch (0, 0) of a 3x3 grid: the distance is that from each patch to the corner.
    attn = torch.zeros(1, 1, 9, 9)
    attn[..., 0] = 1.0
    want = sum(math.hypot(r, c) for r in range(3) for c in range(3)) * 10 / 9
    torch.testing.assert_close(mean_attention_distance(attn, (3, 3), 10, 0), torch.tensor([want], dtype=torch.float32))


def test_per_layer_and_head(vit):
    maps = attention_maps(vit, torch.randn(2, 3, 16, 16))
    dist = attention_distances(maps, (4, 4), 4)
    assert dist.shape == (3, 4)
    assert bool((dist >= 0).all()) and bool((dist <= math.hypot(12, 12)).all())


def test_shape_mismatch():
    with pytest.raises(VitlabError, match="patch grid"):
        mean_attention_distance(uniform(1, 1, 10), (3, 3), 4, num_prefix_tokens=0)
