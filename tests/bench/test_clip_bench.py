"""vitlab bench on CLIP: a contrastive step on image-text pairs, HF's CLIPModel from our weights with equal
logits_per_image checked before timing (and the check fails when the reference is broken), MACs per pair."""
import json

import pytest
import torch

import vitlab
from vitlab.bench import contrastive, throughput
from vitlab.bench.contrastive import random_texts
from vitlab.bench.throughput import BenchConfig, build_ours
from vitlab.cli import main

MODEL = "clip_micro_patch16_64"
FAST = ["--batch-size", "2", "--repeats", "1", "--warmup", "0", "--no-peak", "--threads", "1"]


def test_texts_look_like_a_tokenizers_and_eos_is_exportable():
    model = build_ours(BenchConfig(MODEL))
    V, L = model.cfg.vocab_size, model.cfg.context_length
    assert model.cfg.eos_id == V - 1 == 511       # the micro models' eos 2 moved where HF pools without renumbering
    assert vitlab.create_model(MODEL).cfg.eos_id == 2
    torch.manual_seed(0)
    ids = random_texts(model, 64)
    assert ids.shape == (64, L) and ids.dtype == torch.long
    assert (ids[:, 0] == V - 2).all()                                   # bos
    eos = ids == V - 1
    assert (eos.sum(1) == 1).all()                                      # one eos per text ...
    at = eos.int().argmax(1)
    assert (ids.argmax(1) == at).all()                                  # ... the largest id: argmax pools there too
    pos = torch.arange(L)
    assert (ids[pos > at[:, None]] == 0).all() and (ids[(pos < at[:, None]) & (pos > 0)] >= 1).all()
    assert len(set(at.tolist())) > 10 and at.min() >= 2                 # caption lengths vary


def test_cli_bench_clip_against_hf_writes_the_ratio(tmp_path, capsys):
    pytest.importorskip("transformers", reason="the HF reference needs transformers")
    out = tmp_path / "clip.json"
    assert main(["bench", MODEL, "--mode", "infer,train", "--compare", "hf", *FAST, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"| {MODEL} | infer | fp32 | 2 | hf |" in printed and f"| {MODEL} | train | fp32 | 2 | hf |" in printed
    results = json.loads(out.read_text())["results"]
    assert [r["config"]["mode"] for r in results] == ["infer", "train"]
    for r in results:
        ours, hf = r["timings"]["ours"], r["timings"]["hf"]
        assert r["ratios"]["hf"] == pytest.approx(ours["images_per_s"] / hf["images_per_s"])
        assert ours["memory_mb"] > 0 and hf["memory_mb"] > 0
        # per image-text pair, by hand: patch conv 16 x 768 x 128; 4 vision blocks of 17 tokens (qkv, proj,
        # fc1, fc2: 128 x 1536 per token, attention 2 x 17^2 x 128); 3 text blocks of 40 tokens; two projections
        vision = 16 * 768 * 128 + 4 * (17 * 128 * 1536 + 2 * 17 ** 2 * 128)
        text = 3 * (40 * 128 * 1536 + 2 * 40 ** 2 * 128)
        assert r["macs_per_image"] == vision + text + 2 * 128 * 128 == 40_092_672


def _perturbed_reference(row: str):
    """The real HF reference with one token-embedding row changed: the eos row (read by the pooling) or the
    padding row 0 (only after the eos, which the causal mask hides from it)."""
    real = contrastive.hf_clip_reference                 # the module's own, never a patched one

    def build(ours):
        ref = real(ours)
        index = ours.cfg.eos_id if row == "eos" else 0
        weight = ref.model.text_model.embeddings.token_embedding.weight
        with torch.no_grad():       # not a constant shift, which every pre-norm LayerNorm would remove
            weight[index] += 0.5 * torch.randn(weight.shape[1], generator=torch.Generator().manual_seed(0))
        return ref

    return build


def test_logits_check_refuses_a_reference_that_is_not_our_model(monkeypatch, capsys):
    pytest.importorskip("transformers", reason="the HF reference needs transformers")
    timed = []
    real_timing = throughput.time_interleaved
    monkeypatch.setattr(throughput, "time_interleaved", lambda *a, **k: timed.append(1) or real_timing(*a, **k))
    monkeypatch.setattr(throughput, "hf_clip_reference", _perturbed_reference("eos"))
    assert main(["bench", MODEL, "--mode", "infer", "--compare", "hf", *FAST]) == 2
    err = capsys.readouterr().err
    assert "CLIP logits_per_image differ from ours" in err and "Traceback" not in err
    assert timed == []                                                  # refused before anything was timed
    # the control: a row only padding uses changes nothing the model reads, so the check passes and timing runs
    monkeypatch.setattr(throughput, "hf_clip_reference", _perturbed_reference("pad"))
    assert main(["bench", MODEL, "--mode", "infer", "--compare", "hf", *FAST]) == 0
    assert timed == [1]
