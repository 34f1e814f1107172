"""Tokenizers through the `tokenizers` library (HF): a word-level vocabulary built from a corpus, or a BPE a user
has (tokenizer.json, or GPT-2/CLIP-style vocab.json + merges.txt), read from local files only.

    tok = build_word_level(["ninety-seven", "quatre-vingt-dix-sept"], max_length=64)
    ids = tok.encode("ninety-seven")            # [bos, ..., eos]
    batch, mask = tok.encode_batch(texts)       # (B, L) long padded with pad_id, (B, L) bool True = token
    tok.decode(ids) == "ninety-seven"

Word level: words split at spaces (kept as the Metaspace marker, so decoding restores them exactly) and at
punctuation (hyphens and commas are tokens of their own: "quatre-vingt" is three tokens, not one rare word).
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import VitlabError


@dataclass(frozen=True)
class SpecialTokens:
    pad: str = "<pad>"      # padding (id 0 in a built vocabulary); ignored by the loss
    bos: str = "<s>"        # start of a sentence: the decoder's first input
    eos: str = "</s>"       # end of a sentence: decoding stops here
    unk: str = "<unk>"      # a word the vocabulary does not hold

    def as_list(self) -> list[str]:
        return [self.pad, self.bos, self.eos, self.unk]


class TextTokenizer:
    """A `tokenizers.Tokenizer` with our special tokens, a maximum length, padding and exact errors."""

    def __init__(self, tokenizer: Any, specials: SpecialTokens = SpecialTokens(), max_length: int = 128) -> None:
        if max_length < 3:
            raise VitlabError(f"max_length must be at least 3 (bos, a token, eos), got {max_length}")
        missing = [t for t in specials.as_list() if tokenizer.token_to_id(t) is None]
        if missing:   # a foreign BPE without our specials: appended at the end of its vocabulary
            tokenizer.add_special_tokens(missing)
        self.tokenizer, self.specials, self.max_length = tokenizer, specials, max_length
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = (tokenizer.token_to_id(t) for t in specials.as_list())

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def tokens(self) -> list[str]:
        """The vocabulary in id order."""
        vocab = self.tokenizer.get_vocab(with_added_tokens=True)
        out = [""] * self.vocab_size
        for token, i in vocab.items():
            out[i] = token
        return out

    def encode(self, text: str, *, bos: bool = True, eos: bool = True, truncate: bool = False) -> list[int]:
        """Token ids of one text, with bos/eos. Longer than max_length: VitlabError, or cut (eos kept) with
        `truncate`."""
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        ids = [self.bos_id] * bos + ids + [self.eos_id] * eos
        if len(ids) > self.max_length:
            if not truncate:
                raise VitlabError(f"text of {len(ids)} tokens is longer than the maximum {self.max_length}: "
                                  f"{text[:60]!r}")
            ids = ids[:self.max_length - eos] + [self.eos_id] * eos
        return ids

    def encode_batch(self, texts: Sequence[str], *, truncate: bool = False,
                     pad_to: int | None = None) -> tuple[Tensor, Tensor]:
        """Texts -> ids (B, L) long, right-padded with pad_id to the longest (or to `pad_to`), and the mask
        (B, L) bool, True = a real token."""
        return pad_ids([self.encode(t, truncate=truncate) for t in texts], self.pad_id, pad_to)

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text, up to the first eos, special tokens dropped."""
        kept = []
        for i in (int(i) for i in ids):
            if i == self.eos_id:
                break
            if i not in (self.pad_id, self.bos_id):
                kept.append(i)
        return self.tokenizer.decode(kept, skip_special_tokens=False).strip()

    def words(self, text: str) -> list[str]:
        """The tokens of `text` as strings (no bos/eos), for figures' axes."""
        return self.tokenizer.encode(text, add_special_tokens=False).tokens

    # --- persistence: a checkpoint's config.json holds this dict ------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"tokenizer": json.loads(self.tokenizer.to_str()), "specials": asdict(self.specials),
                "max_length": self.max_length}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TextTokenizer":
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_str(json.dumps(d["tokenizer"])), SpecialTokens(**d["specials"]), d["max_length"])


def pad_ids(rows: Sequence[Sequence[int]], pad_id: int, pad_to: int | None = None) -> tuple[Tensor, Tensor]:
    """Id lists -> (B, L) long right-padded with pad_id, and (B, L) bool mask (True = token)."""
    length = max(len(r) for r in rows) if pad_to is None else pad_to
    if any(len(r) > length for r in rows):
        raise VitlabError(f"a sequence of {max(len(r) for r in rows)} tokens does not fit pad_to={length}")
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.as_tensor(list(r), dtype=torch.long)
    return ids, ids != pad_id


def build_word_level(corpus: Iterable[str], *, min_frequency: int = 1, max_length: int = 128,
                     specials: SpecialTokens = SpecialTokens()) -> TextTokenizer:
    """A word-level vocabulary of `corpus` (specials first: pad 0, bos 1, eos 2, unk 3)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token=specials.unk))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(), pre_tokenizers.Punctuation("isolated")])
    tok.decoder = decoders.Metaspace()
    trainer = trainers.WordLevelTrainer(special_tokens=specials.as_list(), min_frequency=min_frequency)
    tok.train_from_iterator(corpus, trainer)
    return TextTokenizer(tok, specials, max_length)


def load_bpe(path: str | Path, merges: str | Path | None = None, *, max_length: int = 128,
             specials: SpecialTokens = SpecialTokens()) -> TextTokenizer:
    """A BPE from local files: a tokenizer.json, a folder holding tokenizer.json or vocab.json + merges.txt, or
    vocab.json with `merges` (byte-level, as GPT-2's). Special tokens missing from the vocabulary are appended."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    path = Path(path)
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            path = path / "tokenizer.json"
        elif (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            path, merges = path / "vocab.json", path / "merges.txt"
        else:
            raise VitlabError(f"{path}: no tokenizer.json, nor vocab.json + merges.txt")
    if not path.is_file():
        raise VitlabError(f"{path}: no such tokenizer file")
    try:
        if merges is None:
            return TextTokenizer(Tokenizer.from_file(str(path)), specials, max_length)
        if not Path(merges).is_file():
            raise VitlabError(f"{merges}: no such merges file")
        tok = Tokenizer(models.BPE.from_file(str(path), str(merges)))
    except Exception as e:   # the library's own parse errors, as one line
        if isinstance(e, VitlabError):
            raise
        raise VitlabError(f"{path}: not a tokenizer file ({str(e).splitlines()[0][:120]})") from None
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return TextTokenizer(tok, specials, max_length)
