import numpy as np
import pytest
import torch

from vitlab.errors import VitlabError
from vitlab.explain import attention_maps, attention_rollout, classifier_attention, rollout_map
from vitlab.explain.rollout import rollout_step


def loop_rollout(maps, fusion="mean", discard_ratio=0.0):
    """Abnar & Zuidema's rollout written as plain loops over images, rows and entries (float64 numpy)."""
    B, H, N, _ = maps[0].shape
    out = np.zeros((B, N, N))
    for b in range(B):
        joint = np.eye(N)
        for layer in maps:
            a = layer[b].double().numpy()
            fused = np.zeros((N, N))
            for i in range(N):
                for j in range(N):
                    heads = [a[h, i, j] for h in range(H)]
                    fused[i, j] = {"mean": sum(heads) / H, "max": max(heads), "min": min(heads)}[fusion]
            k = int(N * N * discard_ratio)
            for flat in np.argsort(fused, axis=None, kind="stable")[:k]:
                fused[flat // N, flat % N] = 0.0
            for i in range(N):
                fused[i, i] += 1.0
                fused[i] /= fused[i].sum()
            joint = fused @ joint
        out[b] = joint
    return torch.from_numpy(out)


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
def test_rollout_equals_plain_loop(vit, fusion):
    maps = attention_maps(vit, torch.randn(2, 3, 16, 16))
    got = attention_rollout(maps, fusion)
    assert got.shape == (2, 17, 17)
    torch.testing.assert_close(got.double(), loop_rollout(maps, fusion), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.sum(-1), torch.ones(2, 17))


def test_discard_ratio_equals_plain_loop(vit):
    maps = attention_maps(vit, torch.randn(2, 3, 16, 16))
    got = attention_rollout(maps, "max", discard_ratio=0.8)
    torch.testing.assert_close(got.double(), loop_rollout(maps, "max", 0.8), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.sum(-1), torch.ones(2, 17))
    assert not torch.allclose(got, attention_rollout(maps, "max"))


def test_row_normalisation_keeps_dims():
    # A fused attention whose rows do not sum to 1 (after discarding): each row must be divided by its own sum.
    # The known bug, a / a.sum(-1) without keepdim, divides columns instead; this input tells them apart.
    a = torch.tensor([[[0.9, 0.0, 0.0], [0.3, 0.3, 0.0], [0.1, 0.2, 0.6]]])
    step = rollout_step(a)
    torch.testing.assert_close(step.sum(-1), torch.ones(1, 3))
    buggy = (a + torch.eye(3)) / (a + torch.eye(3)).sum(-1)
    assert not torch.allclose(buggy.sum(-1), torch.ones(1, 3))
    torch.testing.assert_close(step[0, 1], torch.tensor([0.3, 1.3, 0.0]) / 1.6)


def test_rollout_map_is_cls_row_over_patches(vit):
    maps = attention_maps(vit, torch.randn(2, 3, 16, 16))
    heat = rollout_map(maps, (4, 4), num_prefix_tokens=1)
    row = attention_rollout(maps)[:, 0, 1:].reshape(2, 4, 4)
    torch.testing.assert_close(heat, row / row.flatten(1).amax(1).view(2, 1, 1))
    assert heat.shape == (2, 4, 4)


def test_classifier_attention_without_prefix_is_mean_query():
    attn = torch.rand(1, 2, 4, 4).softmax(-1)
    got = classifier_attention(attn, (2, 2), num_prefix_tokens=0)
    torch.testing.assert_close(got, attn.mean(2).reshape(1, 2, 2, 2))
    cls = classifier_attention(torch.rand(1, 2, 5, 5), (2, 2), num_prefix_tokens=1)
    assert cls.shape == (1, 2, 2, 2)


def test_bad_inputs():
    with pytest.raises(VitlabError, match="head fusion"):
        attention_rollout([torch.rand(1, 2, 5, 5)], "median")
    with pytest.raises(VitlabError, match="windowed"):
        attention_rollout([torch.rand(1, 2, 5, 5), torch.rand(1, 2, 3, 3)])
    with pytest.raises(VitlabError, match="discard ratio"):
        attention_rollout([torch.rand(1, 2, 5, 5)], discard_ratio=1.0)
