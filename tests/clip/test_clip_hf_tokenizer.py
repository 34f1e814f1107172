"""`vitlab convert CLIP_RUN OUT --to hf` writes the tokenizer: transformers loads it offline and gives our ids
(CLIP's BPE), or our ids with eos 2 and the last id exchanged (a word-level vocabulary, whose eos 2 transformers
would pool at argmax); CLIPModel on its ids gives our logits, and the directory converts back."""
from __future__ import annotations

import json

import pytest
import torch

import vitlab
from vitlab.checkpoint import load_model, save_model
from vitlab.cli import main
from vitlab.tasks.contrastive import clip_tokenizer

from .helpers import write_tiny_clip_vocab

transformers = pytest.importorskip("transformers")

CAPTIONS = ["a photo of a cat", "A  CAT, of a photo!!", "the dog's photo", "cat"]
TINY = dict(img_size=32, patch_size=8, vision_dim=32, vision_depth=1, vision_heads=2, text_dim=32, text_depth=1,
            text_heads=2, embed_dim=16, context_length=16)


def _clip_bpe(directory):
    """A CLIP-style byte-level BPE: every byte and byte</w>, a few merges, the two specials last."""
    from vitlab.text.clip_bpe import load_clip_bpe

    directory.mkdir(parents=True, exist_ok=True)
    write_tiny_clip_vocab(directory)
    return load_clip_bpe(directory, max_length=16)


def _run(tmp_path, tok):
    torch.manual_seed(0)
    model = vitlab.create_model("clip_micro_patch8_64", vocab_size=tok.vocab_size, eos_id=tok.eos_id, **TINY).eval()
    save_model(model, tmp_path / "run", task_extras={"tokenizer": tok.to_dict(), "classes": ["cat"]})
    assert main(["convert", str(tmp_path / "run"), str(tmp_path / "hf"), "--to", "hf"]) == 0
    return load_model(tmp_path / "run")


def _logits(model, ids):
    torch.manual_seed(3)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        return x, model(x, ids)["logits_per_image"]


def test_clip_bpe_loads_in_transformers_with_our_ids(tmp_path):
    tok = _clip_bpe(tmp_path / "bpe")
    ours = _run(tmp_path, tok)
    for name in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"):
        assert (tmp_path / "hf" / name).is_file()
    classes = [transformers.CLIPTokenizer] + ([transformers.CLIPTokenizerFast]
                                              if hasattr(transformers, "CLIPTokenizerFast") else [])
    for cls in classes + [transformers.AutoTokenizer]:
        hf_tok = cls.from_pretrained(tmp_path / "hf", local_files_only=True)
        for text in CAPTIONS:
            assert hf_tok(text)["input_ids"] == tok.encode(text), (cls.__name__, text)
    ids, _ = tok.encode_batch(CAPTIONS)
    hf_ids = torch.tensor(hf_tok(CAPTIONS, padding=True)["input_ids"])
    assert torch.equal(hf_ids, ids)                         # pads with <|endoftext|>, as ours
    hf = transformers.CLIPModel.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    x, ref = _logits(ours, ids)
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=hf_ids, pixel_values=x).logits_per_image, ref, atol=1e-4, rtol=0)
    # and back: the converted directory's tokenizer is ours again
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    back = clip_tokenizer(load_model(tmp_path / "back"))
    assert [back.encode(t) for t in CAPTIONS] == [tok.encode(t) for t in CAPTIONS]


def test_word_level_vocabulary_loads_as_a_fast_tokenizer(tmp_path):
    from vitlab.text.tokenizer import build_word_level

    tok = build_word_level(["a red circle", "a blue square left of a red circle", "two cats"], max_length=16)
    assert tok.eos_id == 2
    V = tok.vocab_size
    ours = _run(tmp_path, tok)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())["text_config"]
    assert config["eos_token_id"] == V - 1                  # not 2: transformers would pool at argmax(ids)
    texts = ["a red circle", "two blue cats", "a square left of a circle", "a"]
    swap = {2: V - 1, V - 1: 2}
    for cls in (transformers.PreTrainedTokenizerFast, transformers.AutoTokenizer):
        hf_tok = cls.from_pretrained(tmp_path / "hf", local_files_only=True)
        for text in texts:
            assert hf_tok(text)["input_ids"] == [swap.get(i, i) for i in tok.encode(text)], (cls.__name__, text)
    assert hf_tok.decode(hf_tok("a red circle")["input_ids"], skip_special_tokens=True) == "a red circle"
    ids, _ = tok.encode_batch(texts)
    hf_ids = torch.tensor(hf_tok(texts, padding=True)["input_ids"])
    assert torch.equal(hf_ids, ids.apply_(lambda i: swap.get(i, i)))
    hf = transformers.CLIPModel.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    x, ref = _logits(ours, tok.encode_batch(texts)[0])
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=hf_ids, pixel_values=x).logits_per_image, ref, atol=1e-4, rtol=0)
    # back to vitlab: its tokenizer gives HF's ids, and the same logits
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    back = load_model(tmp_path / "back").eval()
    back_tok = clip_tokenizer(back)
    assert (back_tok.pad_id, back_tok.bos_id, back_tok.eos_id) == (0, 1, V - 1)
    back_ids = back_tok.encode_batch(texts)[0]
    assert torch.equal(back_ids, hf_ids)
    torch.testing.assert_close(_logits(back, back_ids)[1], ref, atol=1e-4, rtol=0)


def test_eos_2_without_a_tokenizer_is_refused(tmp_path, capsys):
    model = vitlab.create_model("clip_micro_patch8_64", vocab_size=20, eos_id=2, **TINY)
    save_model(model, tmp_path / "fresh")
    assert main(["convert", str(tmp_path / "fresh"), str(tmp_path / "hf"), "--to", "hf"]) == 2
    assert "without the model's tokenizer its ids cannot be renumbered" in capsys.readouterr().err
