"""CLIP's BPE through `tokenizers` equals open_clip's SimpleTokenizer (loaded by path from the open-clip-torch
wheel: `import open_clip` needs torchvision)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from vitlab.text.clip_bpe import load_clip_bpe

TEXTS = ["a photo of a cat", "A  Large RED circle, above: the star!!", "it's 1999, don't we'll", "naïve café 東京",
         "supercalifragilisticexpialidocious", "x" * 30 + " ok", "e-mail: someone@example.com #tag"]


def _open_clip_tokenizer():
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("open-clip-torch is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "tokenizer.py"
    pytest.importorskip("ftfy")
    pytest.importorskip("regex")
    module_spec = importlib.util.spec_from_file_location("_open_clip_tokenizer", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.SimpleTokenizer()          # reads bpe_simple_vocab_16e6.txt.gz beside it


def test_equals_open_clip_simple_tokenizer(tmp_path):
    ref = _open_clip_tokenizer()
    # an HF-style directory from open_clip's own tables (open_clip names its specials <start_of_text>, ...)
    rename = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    (tmp_path / "vocab.json").write_text(json.dumps({rename.get(k, k): v for k, v in ref.encoder.items()}))
    merges = sorted(ref.bpe_ranks, key=ref.bpe_ranks.get)
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    tok = load_clip_bpe(tmp_path)
    assert (tok.bos_id, tok.eos_id) == (ref.sot_token_id, ref.eot_token_id) == (49406, 49407)
    for text in TEXTS:
        assert tok.encode(text, bos=False, eos=False) == ref.encode(text), text
    ids, _ = tok.encode_batch(["a photo of a cat"], pad_to=77)
    assert ids[0, :7].tolist() == ref(["a photo of a cat"])[0, :7].tolist()
    assert tok.decode(tok.encode("A photo of a cat")) == "a photo of a cat"
