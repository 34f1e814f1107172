"""The 2017 Transformer: the decoder layer against torch.nn.TransformerDecoderLayer (pre- and post-LN, causal and
padding masks, fused and explicit attention), the model's masks, greedy == beam 1 on the model, shared embeddings
and the paper's warm-up schedule. (The encoder layer's parity test is in test_text_basics.py.)"""
import pytest
import torch

import vitlab
from vitlab.layers.transformer import TransformerDecoderLayer
from vitlab.text import beam_search


def _copy_decoder_layer(ref: torch.nn.TransformerDecoderLayer, ours: TransformerDecoderLayer) -> None:
    C = ref.linear1.in_features
    w, b = ref.multihead_attn.in_proj_weight, ref.multihead_attn.in_proj_bias
    ours.load_state_dict({
        "self_attn.qkv.weight": ref.self_attn.in_proj_weight, "self_attn.qkv.bias": ref.self_attn.in_proj_bias,
        "self_attn.proj.weight": ref.self_attn.out_proj.weight, "self_attn.proj.bias": ref.self_attn.out_proj.bias,
        "cross_attn.q.weight": w[:C], "cross_attn.q.bias": b[:C], "cross_attn.kv.weight": w[C:],
        "cross_attn.kv.bias": b[C:], "cross_attn.proj.weight": ref.multihead_attn.out_proj.weight,
        "cross_attn.proj.bias": ref.multihead_attn.out_proj.bias,
        "mlp.fc1.weight": ref.linear1.weight, "mlp.fc1.bias": ref.linear1.bias, "mlp.fc2.weight": ref.linear2.weight,
        "mlp.fc2.bias": ref.linear2.bias, **{f"norm{i}.{p}": getattr(getattr(ref, f"norm{i}"), p)
                                            for i in (1, 2, 3) for p in ("weight", "bias")}})


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("fused", [True, False])
def test_decoder_layer_matches_torch(norm_first, fused):
    torch.manual_seed(0)
    ref = torch.nn.TransformerDecoderLayer(32, 4, 64, dropout=0.0, batch_first=True, norm_first=norm_first).eval()
    ours = TransformerDecoderLayer(32, 4, 64, dropout=0.0, norm_first=norm_first).eval()
    _copy_decoder_layer(ref, ours)
    ours.self_attn.fused = ours.cross_attn.fused = fused
    x, memory = torch.randn(2, 6, 32), torch.randn(2, 5, 32)
    causal = torch.nn.Transformer.generate_square_subsequent_mask(6)
    pad = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])       # True = a real memory token
    with torch.no_grad():
        torch.testing.assert_close(ours(x, memory), ref(x, memory), atol=1e-5, rtol=0)
        torch.testing.assert_close(ours(x, memory, is_causal=True),
                                   ref(x, memory, tgt_mask=causal, tgt_is_causal=True), atol=1e-5, rtol=0)
        torch.testing.assert_close(ours(x, memory, is_causal=True, memory_key_padding_mask=pad),
                                   ref(x, memory, tgt_mask=causal, tgt_is_causal=True,
                                       memory_key_padding_mask=~pad), atol=1e-5, rtol=0)


def _tiny(**kw):
    torch.manual_seed(0)
    return vitlab.create_model("transformer_tiny", num_classes=20, dim=32, ffn_dim=64, dropout=0.0, **kw).eval()


@pytest.mark.parametrize("norm_first", [False, True])
def test_model_masks_causal_and_source_padding(norm_first):
    model = _tiny(norm_first=norm_first)
    src = torch.tensor([[1, 5, 6, 7, 2]])
    tgt = torch.tensor([[1, 8, 9, 10, 11]])
    with torch.no_grad():
        logits = model(src, tgt)["logits"]                               # (1, 5, 20)
        changed = tgt.clone()
        changed[0, 3:] = torch.tensor([4, 4])                            # a later target token changes ...
        later = model(src, changed)["logits"]
        torch.testing.assert_close(later[:, :3], logits[:, :3])         # ... nothing before it (causal)
        assert not torch.allclose(later[:, 3:], logits[:, 3:])
        padded = model(torch.tensor([[1, 5, 6, 7, 2, 0, 0]]), tgt)["logits"]   # pad 0: masked keys
        torch.testing.assert_close(padded, logits, atol=1e-5, rtol=0)
        assert not torch.allclose(model(torch.tensor([[1, 5, 6, 7, 2, 3, 3]]), tgt)["logits"], logits)


def test_generate_greedy_equals_beam_one_and_outputs_are_named():
    model = _tiny()
    src = torch.tensor([[1, 5, 6, 7, 2], [1, 9, 2, 0, 0]])
    assert set(model(src, src)) == {"logits"}
    greedy = model.generate(src, beam_size=1, max_len=8)
    memory, mask = model.encode(src), src != 0

    def step(tokens, rows):
        return model.decode(tokens, memory[rows], mask[rows])[:, -1].log_softmax(-1)

    assert greedy == beam_search(step, 2, 1, 2, 8, beam_size=1, length_penalty=0.0)
    assert greedy == model.generate(src, beam_size=1, length_penalty=0.0, max_len=8)
    assert len(model.generate(src, beam_size=3, max_len=8)) == 2


def test_shared_and_separate_embeddings():
    shared = _tiny()
    assert shared.encoder.embed is shared.decoder.embed
    assert shared.decoder.head.weight is shared.decoder.embed.tok.weight
    separate = _tiny(share_embeddings=False, src_vocab_size=30)
    assert separate.encoder.embed.tok.weight.shape == (30, 32)
    assert separate.decoder.head.weight is separate.decoder.embed.tok.weight
    assert separate(torch.tensor([[1, 29, 2]]), torch.tensor([[1, 5]]))["logits"].shape == (1, 2, 20)
    with pytest.raises(ValueError, match="share_embeddings needs one vocabulary"):
        _tiny(src_vocab_size=30)


def test_noam_schedule_is_the_papers_formula():
    from vitlab.train.optim import warmup_rsqrt

    d, warmup = 128, 40
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=d ** -0.5 * warmup ** -0.5)
    sched = warmup_rsqrt(opt, warmup)
    for n in range(1, 200):
        paper = d ** -0.5 * min(n ** -0.5, n * warmup ** -1.5)
        assert opt.param_groups[0]["lr"] == pytest.approx(paper, rel=1e-9)
        opt.step()
        sched.step()
