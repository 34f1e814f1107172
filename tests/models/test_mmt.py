"""MMT / COLL video-text retrieval models: the paper's ranking loss by hand, contracts, order sensitivity, and a
short training that lowers the loss."""
import pytest
import torch

import vitlab
from vitlab.errors import VitlabError
from vitlab.models.mmt import info_nce_loss, max_margin_ranking_loss
from vitlab.registry import model_task

NAMES = ("mmt_micro_32", "mmt_maxpool_micro_32", "coll_maxpool_micro_32")


def _model(name, **kw):
    torch.manual_seed(0)
    return vitlab.create_model(name, vocab_size=30, dropout=0.0, **kw).eval()


def test_max_margin_loss_equals_hand_computation():
    rows = [[0.9, 0.2, 0.5], [0.4, 0.1, 0.3], [0.0, 0.8, 0.6]]
    s = torch.tensor(rows)
    m = 0.2
    hand = 0.0
    for i in range(3):
        for j in range(3):
            if j != i:
                hand += max(0.0, rows[i][j] - rows[i][i] + m) + max(0.0, rows[j][i] - rows[i][i] + m)
    assert max_margin_ranking_loss(s, margin=m).item() == pytest.approx(hand / 3, rel=1e-6)
    # a perfectly separated batch (diagonal ahead by more than the margin) costs nothing
    assert max_margin_ranking_loss(torch.eye(4), margin=0.5).item() == 0.0


def test_infonce_option_is_symmetric_cross_entropy_on_scaled_cosines():
    s = torch.tensor([[0.9, 0.2], [0.4, 0.1]])
    logits = s / 0.05
    i2t = torch.nn.functional.cross_entropy(logits, torch.arange(2))
    t2i = torch.nn.functional.cross_entropy(logits.t(), torch.arange(2))
    assert info_nce_loss(s).item() == pytest.approx(((i2t + t2i) / 2).item(), rel=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_contract_shapes_unit_embeddings_and_gradients(name):
    model = _model(name).train()
    assert model_task(name) == "video_text"
    frames, ids = torch.randn(3, 6, 3, 32, 32), torch.randint(4, 30, (5, 9))
    mask = torch.ones(5, 9, dtype=torch.bool)
    mask[0, 6:] = False
    out = model(frames, ids, mask)
    assert out["similarity"].shape == (3, 5)
    torch.testing.assert_close(out["video_embeds"].norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(out["similarity"], out["video_embeds"] @ out["text_embeds"].t())
    (out["similarity"] * torch.randn(3, 5)).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing, missing


def test_mmt_output_depends_on_frame_order_and_max_pool_does_not():
    frames = torch.randn(2, 6, 3, 32, 32)
    reversed_frames = frames.flip(1)
    ordered = _model("mmt_micro_32")
    a, b = ordered.encode_video(frames), ordered.encode_video(reversed_frames)
    assert (a - b).abs().max() > 1e-3
    for name in ("coll_maxpool_micro_32", "mmt_maxpool_micro_32"):
        pooled = _model(name)
        torch.testing.assert_close(pooled.encode_video(frames), pooled.encode_video(reversed_frames))


def test_agg_attention_is_a_distribution_over_frames_per_layer():
    model = _model("mmt_micro_32")
    w = model.agg_attention(torch.randn(2, 6, 3, 32, 32))
    assert w.shape == (2, 2, 6)                                         # (clips, layers, frames)
    # [AGG] also attends to itself: its weights on the frames sum to less than 1
    assert bool((w.sum(-1) < 1).all()) and bool((w > 0).all())
    with pytest.raises(VitlabError, match="only the 'mmt' aggregation"):
        _model("coll_maxpool_micro_32").agg_attention(torch.randn(1, 6, 3, 32, 32))


def test_frozen_frame_encoder_gets_no_gradient_and_bad_settings_are_refused():
    model = _model("mmt_micro_32", freeze_frames=True).train()
    out = model(torch.randn(2, 6, 3, 32, 32), torch.randint(4, 30, (2, 5)))
    out["similarity"].sum().backward()
    assert all(p.grad is None for p in model.frame_encoder.parameters())
    assert model.mmt.layers[0].self_attn.qkv.weight.grad is not None
    with pytest.raises(VitlabError, match="aggregation must be one of"):
        _model("mmt_micro_32", aggregation="mean")
    with pytest.raises(VitlabError, match="only the 'rgb'"):
        _model("mmt_micro_32", modalities=("rgb", "audio"))
    with pytest.raises(VitlabError, match="exceed the model's 6 temporal embeddings"):
        _model("mmt_micro_32").encode_video(torch.randn(1, 7, 3, 32, 32))


def test_short_training_lowers_the_ranking_loss():
    torch.manual_seed(0)
    model = vitlab.create_model("mmt_micro_32", vocab_size=30, dropout=0.0)
    frames = torch.randn(8, 4, 3, 32, 32)
    ids = torch.randint(4, 30, (8, 6))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(25):
        loss = max_margin_ranking_loss(model(frames, ids)["similarity"], margin=0.2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
