"""Eq. 14 of Xu et al. 2015 (lambda * sum_i (1 - sum_t alpha_ti)^2) as the task applies it: lambda is the
`doubly_stochastic` config field (--model-arg), the task's objective adds it for the LSTM decoder only, with the
hand-computed value, and a lambda for a transformer decoder, or a negative one, is refused in one line."""
from __future__ import annotations

import pytest
import torch

import vitlab
from vitlab.errors import VitlabError
from vitlab.tasks.captioning import TASK
from vitlab.text import build_word_level
from vitlab.train import TrainConfig

SMALL = {"encoder_dim": 16, "dim": 16, "attn_dim": 8, "ffn_dim": 32, "num_heads": 2, "encoder_heads": 2,
         "resnet_widths": (8,), "resnet_blocks": 1}


def _model(name: str, **kw):
    torch.manual_seed(0)
    tok = build_word_level(["a red star", "a blue ring left of a star"], max_length=12)
    model = vitlab.create_model(name, num_classes=tok.vocab_size, **SMALL, **kw)
    model.tokenizer = tok
    return model, tok


def test_the_task_adds_lambda_times_eq14_for_the_lstm_by_hand():
    model, tok = _model("sat_lstm_vit_micro_patch8_64", doubly_stochastic=0.5)
    objective = TASK.objective(TrainConfig(model="sat_lstm_vit_micro_patch8_64"), model, torch.device("cpu"))
    ids = torch.tensor([tok.encode("a red star"), tok.encode("a star") + [tok.pad_id]])   # (2, 5)
    x = torch.randn(2, 3, 64, 64)
    _, parts = objective(model.eval(), x, {"ids": ids})
    with torch.no_grad():
        alphas = model(x, ids[:, :-1])["attention"]                                      # (2, 4, 64)
    # by hand: each image's attention summed over its real steps (4 and 3), then (1 - total)^2 over the 64 tokens
    totals = [alphas[0].sum(0), alphas[1, :3].sum(0)]
    expected = 0.5 * sum(float(((1 - t) ** 2).sum()) for t in totals) / 7               # 7 real tokens
    assert parts["attention_reg"].item() == pytest.approx(expected, rel=1e-5)
    assert expected > 0.1                    # 3-4 steps over 64 tokens: far from "every region looked at once"


def test_lambda_zero_and_the_transformer_decoder_add_no_penalty():
    for name, kw in (("sat_lstm_vit_micro_patch8_64", {"doubly_stochastic": 0.0}), ("caption_vit_micro_patch8_64", {})):
        model, tok = _model(name, **kw)
        objective = TASK.objective(TrainConfig(model=name), model, torch.device("cpu"))
        ids = torch.tensor([tok.encode("a red star")])
        loss, parts = objective(model, torch.randn(1, 3, 64, 64), {"ids": ids})
        assert set(parts) == {"caption_ce"} and loss.item() == pytest.approx(parts["caption_ce"].item())


def test_lambda_for_a_transformer_decoder_or_below_zero_is_refused():
    with pytest.raises(VitlabError, match="LSTM decoder's attention regulariser"):
        TASK.check_config(TrainConfig(model="caption_vit_micro_patch8_64", model_args={"doubly_stochastic": 0.5}))
    TASK.check_config(TrainConfig(model="sat_lstm_vit_micro_patch8_64", model_args={"doubly_stochastic": 0.5}))
    with pytest.raises(VitlabError, match="must be >= 0"):
        vitlab.create_model("sat_lstm_vit_micro_patch8_64", doubly_stochastic=-1.0)
