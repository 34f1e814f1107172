"""CLIP's byte-level BPE (Radford et al. 2021, as OpenAI's `simple_tokenizer` and open_clip's SimpleTokenizer) as
a TextTokenizer, from the files an HF CLIP directory holds: tokenizer.json, or vocab.json + merges.txt.

CLIP's BPE differs from GPT-2's: text is lower-cased with whitespace runs collapsed, words are split by CLIP's own
pattern (letters, single digits, runs of other symbols, English contractions), and the last symbol of a word
carries the `</w>` end-of-word suffix. `<|startoftext|>` is bos, `<|endoftext|>` is eos, and pads (as HF's
CLIPTokenizer) and stands for unknown bytes (there are none: every byte has a token).

    tok = load_clip_bpe("openai-clip-dir", max_length=77)
    ids, _ = tok.encode_batch(["a photo of a cat"], pad_to=77)     # [49406, 320, 1125, 539, 320, 2368, 49407, ...]
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import VitlabError
from .tokenizer import SpecialTokens, TextTokenizer

CLIP_SPECIALS = SpecialTokens(pad="<|endoftext|>", bos="<|startoftext|>", eos="<|endoftext|>", unk="<|endoftext|>")
# OpenAI's simple_tokenizer pattern, less its two special tokens (added tokens are matched before it runs)
CLIP_WORD_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def load_clip_bpe(path: str | Path, *, max_length: int = 77) -> TextTokenizer:
    """CLIP's tokenizer from a directory (tokenizer.json, else vocab.json + merges.txt) or a tokenizer.json."""
    from tokenizers import Tokenizer

    path = Path(path)
    if path.is_file():
        return TextTokenizer(Tokenizer.from_file(str(path)), CLIP_SPECIALS, max_length)
    if (path / "tokenizer.json").is_file():
        return TextTokenizer(Tokenizer.from_file(str(path / "tokenizer.json")), CLIP_SPECIALS, max_length)
    if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        return clip_bpe_from_files(path / "vocab.json", path / "merges.txt", max_length=max_length)
    raise VitlabError(f"{path}: no CLIP tokenizer files (tokenizer.json, or vocab.json + merges.txt)")


def clip_bpe_from_files(vocab: str | Path, merges: str | Path, *, max_length: int = 77) -> TextTokenizer:
    """CLIP's pipeline around a vocab.json (token -> id) and merges.txt (one "a b" pair a line, after a header)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    vocab_map = json.loads(Path(vocab).read_text(encoding="utf-8"))
    lines = Path(merges).read_text(encoding="utf-8").splitlines()
    pairs = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
    bad = [p for p in pairs if len(p) != 2]
    if bad:
        raise VitlabError(f"{merges}: {len(bad)} lines are not one merge pair (first: {' '.join(bad[0])!r})")
    bpe = models.BPE(vocab_map, pairs, continuing_subword_prefix="", end_of_word_suffix="</w>",
                     unk_token=CLIP_SPECIALS.unk, fuse_unk=False)
    tok = Tokenizer(bpe)
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_WORD_PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    # `</w>` ends a word: as the byte-level symbol of a space (Ġ) it decodes to one
    tok.decoder = decoders.Sequence([decoders.Replace("</w>", "\u0120"), decoders.ByteLevel()])
    tok.add_special_tokens([CLIP_SPECIALS.bos, CLIP_SPECIALS.eos])
    return TextTokenizer(tok, CLIP_SPECIALS, max_length)
