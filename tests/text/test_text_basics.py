"""Tokenizer round trips and errors, greedy == beam 1, beam search beating greedy on a toy model, and the
encoder layer against torch.nn.TransformerEncoderLayer (pre- and post-LN, causal on both attention paths)."""
import math

import pytest
import torch

from vitlab.errors import VitlabError
from vitlab.layers.transformer import TransformerEncoderLayer
from vitlab.text import beam_search, build_word_level, greedy_decode

CORPUS = ["quatre-vingt-dix-sept mille, un", "nine hundred and ninety-seven thousand, six hundred"]


def test_word_level_round_trip_and_errors():
    tok = build_word_level(CORPUS, max_length=16)
    for text in CORPUS:
        ids = tok.encode(text)
        assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
        assert tok.decode(ids) == text
    assert tok.words("quatre-vingt") == ["▁quatre", "-", "vingt"]
    assert tok.encode("zebra")[1] == tok.unk_id
    with pytest.raises(VitlabError, match="text of 23 tokens is longer than the maximum 16"):
        tok.encode("un " * 20)
    cut = tok.encode("un " * 20, truncate=True)
    assert len(cut) == 16 and cut[-1] == tok.eos_id
    ids, mask = tok.encode_batch(["un", "mille, un"])
    assert ids.shape == (2, 5) and mask.tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    assert ids[0, 3:].tolist() == [tok.pad_id] * 2


def test_greedy_equals_beam_width_one():
    torch.manual_seed(0)
    table = torch.randn(9, 9)

    def step(tokens, rows):
        return (table[tokens[:, -1]] + rows[:, None].float()).log_softmax(-1)

    assert greedy_decode(step, 4, 1, 2, 12) == beam_search(step, 4, 1, 2, 12, beam_size=1, length_penalty=0.0)


def test_beam_finds_the_best_sequence_greedy_misses():
    # tokens: 0 pad, 1 bos, 2 eos, 3 a, 4 b, 5 x, 6 y, 7 z. P(a)=.6 P(b)=.4; after a: x or y .5 each; after b: z 1.
    # greedy: a x (p .30); best: b z (p .40)
    probs = {1: {3: .6, 4: .4}, 3: {5: .5, 6: .5}, 4: {7: 1.0}, 5: {2: 1.0}, 6: {2: 1.0}, 7: {2: 1.0}}

    def step(tokens, rows):
        out = torch.full((tokens.shape[0], 8), -1e9)
        for i, last in enumerate(tokens[:, -1].tolist()):
            for j, p in probs.get(last, {2: 1.0}).items():
                out[i, j] = math.log(p)
        return out

    assert greedy_decode(step, 1, 1, 2, 5) == [[3, 5]]
    assert beam_search(step, 1, 1, 2, 5, beam_size=2, length_penalty=0.0) == [[4, 7]]


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("fused", [True, False])
def test_encoder_layer_matches_torch(norm_first, fused):
    torch.manual_seed(0)
    ref = torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True, norm_first=norm_first).eval()
    ours = TransformerEncoderLayer(32, 4, 64, dropout=0.0, norm_first=norm_first).eval()
    ours.load_state_dict({
        "self_attn.qkv.weight": ref.self_attn.in_proj_weight, "self_attn.qkv.bias": ref.self_attn.in_proj_bias,
        "self_attn.proj.weight": ref.self_attn.out_proj.weight, "self_attn.proj.bias": ref.self_attn.out_proj.bias,
        "mlp.fc1.weight": ref.linear1.weight, "mlp.fc1.bias": ref.linear1.bias, "mlp.fc2.weight": ref.linear2.weight,
        "mlp.fc2.bias": ref.linear2.bias, "norm1.weight": ref.norm1.weight, "norm1.bias": ref.norm1.bias,
        "norm2.weight": ref.norm2.weight, "norm2.bias": ref.norm2.bias})
    ours.self_attn.fused = fused
    x = torch.randn(2, 5, 32)
    causal = torch.nn.Transformer.generate_square_subsequent_mask(5)
    pad = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=0)
        torch.testing.assert_close(ours(x, is_causal=True), ref(x, src_mask=causal, is_causal=True), atol=1e-5, rtol=0)
        torch.testing.assert_close(ours(x, key_padding_mask=pad)[:, :3], ref(x, src_key_padding_mask=~pad)[:, :3],
                                   atol=1e-5, rtol=0)
