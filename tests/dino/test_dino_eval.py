"""Frozen-feature protocols (weighted k-NN, linear probe) and the attention-mask rule, against hand computations."""
import math

import pytest
import torch

import vitlab
from vitlab.eval_protocols import knn_predict, knn_top1, linear_probe_top1
from vitlab.explain.cls_attention import jaccard, last_cls_attention, mass_mask, upsample_mask


def test_knn_weights_votes_by_exp_similarity_over_temperature():
    # query (1, 0); neighbours: one of class 0 at cos 0.9, two of class 1 at cos 0.5 -> k = 3
    bank = torch.tensor([[0.9, math.sqrt(1 - 0.81)], [0.5, math.sqrt(0.75)], [0.5, -math.sqrt(0.75)],
                         [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 1])
    scores = knn_predict(bank, labels, torch.tensor([[2.0, 0.0]]), 2, k=3, temperature=0.07)
    torch.testing.assert_close(scores, torch.tensor([[math.exp(0.9 / 0.07), 2 * math.exp(0.5 / 0.07)]]))
    assert scores.argmax() == 0                          # a majority vote would say 1; the weights say 0
    # a hot temperature flattens the weights into a vote count
    assert knn_predict(bank, labels, torch.tensor([[2.0, 0.0]]), 2, k=3, temperature=100.0).argmax() == 1


def _clusters(n, dim=16, classes=4, seed=0, spread=0.3):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(99)) * 3
    labels = torch.arange(n) % classes
    return centres[labels] + spread * torch.randn(n, dim, generator=g), labels


def test_protocols_on_separable_and_on_random_features():
    train_f, train_y = _clusters(200)
    val_f, val_y = _clusters(80, seed=1)
    assert knn_top1(train_f, train_y, val_f, val_y, 4) == 100.0
    assert linear_probe_top1(train_f, train_y, val_f, val_y, 4) == 100.0
    noise = torch.randn(200, 16, generator=torch.Generator().manual_seed(3))
    assert knn_top1(noise, train_y, val_f, val_y, 4) < 50.0          # features that carry no class: near chance
    # linear but not cosine-separable (classes differ in the norm only): the probe finds it, cosine k-NN cannot
    radial_train = torch.randn(200, 4, generator=torch.Generator().manual_seed(4))
    radial_train[:, 0] = radial_train[:, 0].abs() + 1
    y = (torch.arange(200) % 2)
    radial_train[y == 1, 0] += 10
    assert linear_probe_top1(radial_train[:150], y[:150], radial_train[150:], y[150:], 2) == 100.0


def test_mass_mask_keeps_the_fewest_top_patches_holding_60_percent():
    attn = torch.tensor([[0.1, 0.5], [0.1, 0.3]])        # 0.5 alone < 0.6; 0.5 + 0.3 >= 0.6
    assert mass_mask(attn).tolist() == [[False, True], [False, True]]
    assert mass_mask(attn * 7).tolist() == [[False, True], [False, True]]     # any total: shares count
    assert mass_mask(torch.tensor([[0.7, 0.2, 0.1]])).tolist() == [[True, False, False]]
    assert mass_mask(torch.tensor([[0.25, 0.25, 0.3, 0.2]]), keep=0.9).tolist() == [[True, True, True, True]]
    # per map over the last two axes: (B, heads, gh, gw)
    batch = torch.stack([attn, attn.flip(-1)])[:, None]
    assert mass_mask(batch)[1, 0].tolist() == [[True, False], [True, False]]


def test_jaccard_and_upsampling_by_hand():
    pred = upsample_mask(torch.tensor([[True, False], [False, False]]), 4)    # the top-left 2x2 pixels
    assert pred.sum() == 4 and pred[:2, :2].all()
    target = torch.zeros(4, 4, dtype=torch.bool)
    target[:2, :3] = True                                  # 6 pixels, 4 shared
    assert jaccard(pred, target).item() == pytest.approx(4 / 6)
    assert jaccard(torch.zeros(4, 4, dtype=torch.bool), torch.zeros(4, 4, dtype=torch.bool)).item() == 1.0


def test_last_layer_cls_attention_of_dino_and_supervised_vits():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    dino = vitlab.create_model("dino_vit_micro_patch4_32", out_dim=16, hidden_dim=32, bottleneck_dim=8).eval()
    vit = vitlab.create_model("vit_micro_patch4_32", num_classes=6).eval()
    for model in (dino, vit):
        attn = last_cls_attention(model, x)
        assert attn.shape == (2, 4, 8, 8)                  # 4 heads over the 8x8 patch grid
        assert (attn.sum(dim=(-2, -1)) <= 1 + 1e-5).all() and (attn > 0).all()
    # the DINO picture is the teacher's
    from vitlab.explain.recording import record_attention
    _, weights = record_attention(dino.teacher.backbone, x)
    torch.testing.assert_close(last_cls_attention(dino, x).flatten(-2), weights[-1][:, :, 0, 1:])
