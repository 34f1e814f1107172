"""The LSTM decoder's initial state (`lstm_init`, --model-arg): "mean" is Xu et al. 2015 §3.1.2 (h_0, c_0 =
tanh(MLP(mean of the annotations))), "zeros" and "learned" start every image from the same constant, so the image
reaches the LSTM only through its attention. Checked against the "mean" decoder with the same weights, whose init
MLPs are set by hand to give that constant; bad values are refused in one line."""
from __future__ import annotations

import pytest
import torch

import vitlab
from vitlab.errors import VitlabError

SMALL = {"encoder_dim": 16, "dim": 16, "attn_dim": 8, "ffn_dim": 32, "num_heads": 2, "encoder_heads": 2,
         "resnet_widths": (8,), "resnet_blocks": 1, "num_classes": 12, "dropout": 0.0}
NAME = "sat_lstm_vit_micro_patch8_64"


def _pair(init: str):
    """A `mean` captioner and an `init` one with every shared weight equal."""
    torch.manual_seed(0)
    mean_model = vitlab.create_model(NAME, **SMALL).eval()
    other = vitlab.create_model(NAME, lstm_init=init, **SMALL).eval()
    missing, unexpected = other.load_state_dict(mean_model.state_dict(), strict=False)
    assert set(unexpected) == {f"decoder.init_{s}.{p}" for s in "hc" for p in ("weight", "bias")}
    assert set(missing) == ({"decoder.h0", "decoder.c0"} if init == "learned" else set())
    return mean_model, other


def _inputs():
    torch.manual_seed(1)
    return torch.randn(3, 3, 64, 64), torch.randint(0, 12, (3, 6))


def test_zeros_start_ignores_the_features_and_equals_a_mean_start_whose_mlps_give_zero():
    mean_model, zeros = _pair("zeros")
    x, ids = _inputs()
    feats = zeros.encode(x)
    for f in (feats, 10 * feats + 3):                      # whatever the annotations, h_0 = c_0 = 0
        h0, c0 = zeros.decoder.initial_state(f)
        assert h0.shape == (3, 16) and not h0.any() and not c0.any()
    with torch.no_grad():
        differs = (mean_model(x, ids)["logits"] - zeros(x, ids)["logits"]).abs().max()
        for layer in (mean_model.decoder.init_h, mean_model.decoder.init_c):
            layer.weight.zero_()
            layer.bias.zero_()                             # tanh(0 * mean + 0) = 0: the zeros start, by hand
        ref, out = mean_model(x, ids), zeros(x, ids)
    assert differs > 1e-3                                  # the mean start does carry the image
    torch.testing.assert_close(out["logits"], ref["logits"])
    torch.testing.assert_close(out["attention"], ref["attention"])


def test_learned_start_is_one_trained_constant_per_state():
    mean_model, learned = _pair("learned")
    x, ids = _inputs()
    v_h, v_c = torch.linspace(-0.5, 0.5, 16), torch.linspace(0.3, -0.2, 16)
    with torch.no_grad():
        learned.decoder.h0.copy_(v_h[None])
        learned.decoder.c0.copy_(v_c[None])
        for layer, v in ((mean_model.decoder.init_h, v_h), (mean_model.decoder.init_c, v_c)):
            layer.weight.zero_()
            layer.bias.copy_(torch.atanh(v))               # tanh(atanh(v)) = v for every image
        torch.testing.assert_close(learned(x, ids)["logits"], mean_model(x, ids)["logits"])
    h0, _ = learned.decoder.initial_state(learned.encode(x))
    torch.testing.assert_close(h0, v_h.expand(3, -1))
    learned.train()
    learned(x, ids)["logits"].logsumexp(-1).sum().backward()
    assert learned.decoder.h0.grad.abs().sum() > 0 and learned.decoder.c0.grad.abs().sum() > 0


def test_the_default_start_is_still_the_papers_mean():
    model = vitlab.create_model(NAME, **SMALL)
    assert model.cfg.lstm_init == "mean" and model.decoder.init == "mean"
    x, _ = _inputs()
    feats = model.encode(x)
    h0, c0 = model.decoder.initial_state(feats)
    torch.testing.assert_close(h0, torch.tanh(model.decoder.init_h(feats.mean(1))))
    assert (h0[0] - h0[1]).abs().max() > 1e-4                              # differs per image


def test_bad_lstm_init_values_are_refused():
    with pytest.raises(VitlabError, match=r"^lstm_init must be one of mean, zeros, learned, got 'ones'$"):
        vitlab.create_model(NAME, lstm_init="ones", **SMALL)
    with pytest.raises(VitlabError, match=r"^lstm_init must be one of mean, zeros, learned, got 0$"):
        vitlab.create_model("sat_lstm_resnet_micro_64", lstm_init=0, **SMALL)
    with pytest.raises(VitlabError, match=r"^lstm_init is the LSTM decoder's initial state \(§3\.1\.2\); this model "
                                          r"has a transformer decoder$"):
        vitlab.create_model("caption_vit_micro_patch8_64", lstm_init="zeros", **SMALL)
