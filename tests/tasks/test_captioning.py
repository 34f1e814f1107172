"""Captioning parts: the grounding score on a hand-built case, our use of pycocoevalcap (keys, BLEU-4 against
sacrebleu), the doubly stochastic regulariser by hand, decoders' teacher forcing equal to step-wise decoding, the
teacher-forced loss falling, and decoding producing text with one attention row per word."""
import pytest
import torch

import vitlab
from vitlab.data.captions import GroundObject, build_caption_data
from vitlab.models.captioning import doubly_stochastic_penalty
from vitlab.tasks.captioning import CaptionObjective, caption_scores, coco_tokens, generate_captions, grounding

SMALL = dict(encoder_dim=32, encoder_depth=1, dim=32, depth=1, ffn_dim=64, attn_dim=32, num_heads=2,
             encoder_heads=2, resnet_widths=(8,), resnet_blocks=1, dropout=0.0)


def _mask(size, cells):
    m = torch.zeros(size, size, dtype=torch.bool)
    for r, c in cells:
        m[r, c] = True
    return m


def test_grounding_by_hand():
    # a 4x4 image, a 2x2 grid of tokens (2x2 pixels each), tokens row-major: 0 top-left, 1 top-right, 2, 3
    star = GroundObject("star", "red", _mask(4, [(0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (1, 2)]))   # fracs 1, .5
    circle = GroundObject("circle", "blue", _mask(4, [(2, 2), (2, 3), (3, 2), (3, 3)]))             # frac 1 on 3
    words = ["a", "small", "red", "star", "above", "a", "blue", "circle", ",", "green", "star", "square"]
    attention = torch.full((len(words), 4), 0.25)
    attention[3] = torch.tensor([0.5, 0.2, 0.2, 0.1])
    attention[7] = torch.tensor([0.1, 0.1, 0.1, 0.7])
    scored = grounding(words, attention, [star, circle], (2, 2))
    # red star: 0.5 * 1 + 0.2 * 0.5 = 0.6 inside, uniform share 1.5 / 4; blue circle: 0.7, 1 / 4; "green star"
    # and "square" name no object of this image and are not scored
    assert scored == [pytest.approx((0.6, 0.375)), pytest.approx((0.7, 0.25))]
    # a shape word without a colour word before it names every object of that shape
    assert grounding(["the", "star"], torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]]), [star],
                     (2, 2)) == [pytest.approx((0.5, 0.375))]


def test_caption_scores_keys_and_perfect_captions():
    refs = [["a small red star"], ["a large blue circle above a small green ring"], ["a small white cross"]]
    scores = caption_scores([r[0] for r in refs], refs)
    assert set(scores) == {"val_bleu1", "val_bleu2", "val_bleu3", "val_bleu4", "val_cider", "val_rougeL",
                           "val_exact"}
    assert scores["val_bleu4"] == pytest.approx(1.0) and scores["val_exact"] == 1.0
    assert scores["val_rougeL"] == pytest.approx(1.0)
    wrong = caption_scores(["a small red star", "a large blue circle", "a cross"], refs)
    assert wrong["val_exact"] == pytest.approx(1 / 3) and wrong["val_bleu4"] < 0.9 and wrong["val_cider"] > 0


def test_bleu4_agrees_with_sacrebleu_corpus_bleu():
    """Both are corpus BLEU (Papineni et al.): clipped n-gram precisions summed over the corpus, geometric mean,
    brevity penalty from the closest reference length (ties to the shorter). pycocoevalcap adds 1e-15 / 1e-9 to
    each precision's numerator / denominator; sacrebleu by default tokenises with 13a and smooths. With
    sacrebleu's tokenisation and smoothing off, on words already tokenised the same way, they agree to 1e-6."""
    sacrebleu = pytest.importorskip("sacrebleu")
    hyps = ["a small red star above a large blue circle", "a large green ring to the left of a small star",
            "a small white cross", "a small yellow triangle below a small red square and a cross"]
    refs_a = ["a small red star above a large blue circle", "a large green ring to the left of a small white star",
              "a small white cross below a ring", "a small yellow triangle below a large red square"]
    refs_b = ["a red star above a blue circle", "a green ring left of a star", "a white cross",
              "a yellow triangle below a red square, and a cross"]
    ours = caption_scores(hyps, [[a, b] for a, b in zip(refs_a, refs_b)])["val_bleu4"]
    theirs = sacrebleu.corpus_bleu([coco_tokens(h) for h in hyps], [[coco_tokens(r) for r in refs_a],
                                                                     [coco_tokens(r) for r in refs_b]],
                                   tokenize="none", smooth_method="none", force=True).score / 100
    assert 0.2 < ours < 0.99
    assert ours == pytest.approx(theirs, abs=1e-6)


def test_doubly_stochastic_penalty_by_hand():
    alphas = torch.tensor([[[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]]])         # (B=1, T=3, N=2)
    real = torch.tensor([[True, True, False]])                             # the last step is padding
    # sum over real steps: (1.4, 0.6) -> (1 - 1.4)^2 + (1 - 0.6)^2 = 0.32
    assert doubly_stochastic_penalty(alphas, real).tolist() == [pytest.approx(0.32)]
    # the objective adds lambda * penalty / (real tokens) to the per-token cross-entropy
    model = vitlab.create_model("sat_lstm_resnet_micro_64", num_classes=12, **SMALL)
    objective = CaptionObjective(pad_id=0, doubly_stochastic=2.0)
    ids = torch.tensor([[1, 5, 6, 2], [1, 7, 2, 0]])
    x = torch.randn(2, 3, 64, 64)
    loss, parts = objective(model, x, {"ids": ids})
    out = model(x, ids[:, :-1])
    penalty = doubly_stochastic_penalty(out["attention"], ids[:, 1:] != 0).sum()
    assert parts["attention_reg"].item() == pytest.approx(2.0 * penalty.item() / 5, rel=1e-5)
    assert loss.item() == pytest.approx(parts["caption_ce"].item() + parts["attention_reg"].item(), rel=1e-6)


@pytest.mark.parametrize("name", ["caption_vit_micro_patch8_64", "sat_lstm_resnet_micro_64"])
def test_teacher_forcing_equals_step_by_step_decoding(name):
    torch.manual_seed(0)
    model = vitlab.create_model(name, num_classes=15, **SMALL).eval()
    x, ids = torch.randn(2, 3, 64, 64), torch.randint(4, 15, (2, 6))
    with torch.no_grad():
        full = model(x, ids, return_attention=True)
        step = model.step_fn(model.encode(x))
        for t in range(1, 7):
            torch.testing.assert_close(step(ids[:, :t], torch.arange(2)), full["logits"][:, t - 1].log_softmax(-1),
                                       atol=1e-5, rtol=1e-5)
        # the recorded (explicit-path) forward gives the fused forward's logits
        torch.testing.assert_close(model(x, ids)["logits"], full["logits"], atol=1e-5, rtol=1e-5)
    att = full["attention"]
    assert att.shape == (2, 6, 64) and torch.allclose(att.sum(-1), torch.ones(2, 6), atol=1e-5)


@pytest.fixture(scope="module")
def tiny_scenes():
    return build_caption_data("scenes", 64, n_train=16, n_val=4)


@pytest.mark.parametrize("name", ["caption_vit_micro_patch8_64", "sat_lstm_resnet_micro_64"])
def test_teacher_forced_loss_falls(tiny_scenes, name):
    torch.manual_seed(0)
    data = tiny_scenes
    model = vitlab.create_model(name, num_classes=data.tokenizer.vocab_size, **SMALL)
    ids, _ = data.tokenizer.encode_batch([r[0] for r in data.train.references])
    x = data.train.images.float() / 127.5 - 1
    reg = 1.0 if "lstm" in name else 0.0
    objective = CaptionObjective(data.tokenizer.pad_id, doubly_stochastic=reg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss, parts = objective(model, x, {"ids": ids})
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(parts["caption_ce"].item())
    assert ("attention_reg" in parts) == bool(reg)
    assert losses[-1] < 0.5 * losses[0], losses[::10]


@pytest.mark.parametrize("beam_size", [1, 3])
def test_decoding_produces_text_with_one_attention_row_per_word(tiny_scenes, beam_size):
    torch.manual_seed(0)
    tok = tiny_scenes.tokenizer
    model = vitlab.create_model("caption_resnet_micro_64", num_classes=tok.vocab_size, **SMALL)
    caps = generate_captions(model, torch.randn(3, 3, 64, 64), tok, beam_size=beam_size)
    vocab = {t.replace("\u2581", "") for t in tok.tokens()}
    for cap in caps:
        assert 1 <= len(cap.words) <= model.cfg.max_len - 1
        assert set(cap.words) <= vocab and cap.text == tok.decode(tok.encode(cap.text, truncate=True))
        assert cap.attention.shape == (len(cap.words), 64)
        assert torch.allclose(cap.attention.sum(-1), torch.ones(len(cap.words)), atol=1e-5)
    if beam_size == 1:   # greedy = beam search of width 1 without a length penalty
        from vitlab.text.decoding import beam_search

        x = torch.randn(3, 3, 64, 64)
        with torch.no_grad():
            seqs = beam_search(model.eval().step_fn(model.encode(x)), 3, tok.bos_id, tok.eos_id,
                               min(model.cfg.max_len - 1, tok.max_length - 2), beam_size=1, length_penalty=0.0)
        assert [c.text for c in generate_captions(model, x, tok)] == [tok.decode(s) for s in seqs]
