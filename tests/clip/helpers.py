"""What the CLIP tests share: a tiny CLIP-style byte-level BPE vocabulary written to a directory."""
from __future__ import annotations

import json
from pathlib import Path


def write_tiny_clip_vocab(directory: Path) -> list[str]:
    """vocab.json + merges.txt of a CLIP-style BPE (bytes, bytes + </w>, a few merges, the two specials) in
    directory; returns the vocabulary in id order."""
    from tokenizers import pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    merges = [("c", "a"), ("ca", "t</w>"), ("o", "f</w>"), ("p", "h"), ("ph", "o"), ("pho", "t"), ("phot", "o</w>")]
    vocab = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return vocab
