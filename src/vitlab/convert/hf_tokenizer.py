"""A CLIP model's tokenizer as the files of an HF transformers directory, and back.

    write_hf_tokenizer(tok, dir, max_length, swap)   tokenizer.json, tokenizer_config.json, special_tokens_map.json
                                                     (+ vocab.json and merges.txt for CLIP's BPE)
    read_hf_tokenizer(dir, max_length)               -> TextTokenizer, or None when the directory has none

CLIP's byte-level BPE (vitlab.text.clip_bpe) is written as transformers' `CLIPTokenizer` reads it; any other
tokenizer (the word-level vocabulary of a caption set) as a `tokenizer.json` that `PreTrainedTokenizerFast` (and
`AutoTokenizer`) load. Both get a post-processor that adds bos ... eos, so `tokenizer(text)["input_ids"]` equals
our `tok.encode(text)`.

transformers pools CLIP's text at argmax(input_ids) whenever eos_token_id is 2 (its legacy rule), and a
word-level vocabulary puts eos at 2 (pad 0, bos 1, eos 2, unk 3). Exporting such a model swaps ids 2 and V - 1
in the token embedding and in the tokenizer alike (`eos_swap`): HF's ids then differ from ours in those two
places only, and the same text gives the same logits.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import VitlabError
from ..io import atomic_path

LEGACY_EOS = 2            # transformers' CLIPTextTransformer pools at argmax(ids) for this eos_token_id


def eos_swap(eos_id: int, vocab_size: int) -> tuple[int, int] | None:
    """The two ids exchanged on export so that HF pools at our eos token: (2, V - 1) when eos is 2, else None."""
    return (LEGACY_EOS, vocab_size - 1) if eos_id == LEGACY_EOS and vocab_size - 1 != LEGACY_EOS else None


def swapped(i: int, swap: tuple[int, int] | None) -> int:
    if swap is None:
        return i
    a, b = swap
    return b if i == a else a if i == b else i


def is_clip_bpe(tok: Any) -> bool:
    """Our CLIP BPE (vitlab.text.clip_bpe: BPE with the `</w>` suffix and CLIP's special tokens)?"""
    from ..text.clip_bpe import CLIP_SPECIALS

    model = json.loads(tok.tokenizer.to_str())["model"]
    return (model.get("type") == "BPE" and model.get("end_of_word_suffix") == "</w>"
            and tok.specials == CLIP_SPECIALS)


def write_hf_tokenizer(tok: Any, directory: str | Path, max_length: int,
                       swap: tuple[int, int] | None = None) -> list[Path]:
    """Write `tok` (a vitlab TextTokenizer) into an HF directory; ids 2 and V - 1 exchanged when `swap` is given.
    Returns the files written."""
    directory = Path(directory)
    data = json.loads(tok.tokenizer.to_str())
    if swap is not None:
        data = _swap_ids(data, swap)
    bos, eos = tok.specials.bos, tok.specials.eos
    bos_id, eos_id = swapped(tok.bos_id, swap), swapped(tok.eos_id, swap)
    data["post_processor"] = _bos_eos_template(bos, bos_id, eos, eos_id)
    data["truncation"], data["padding"] = None, None
    specials = {"bos_token": bos, "eos_token": eos, "pad_token": tok.specials.pad, "unk_token": tok.specials.unk}
    clip = is_clip_bpe(tok)
    config = {"tokenizer_class": "CLIPTokenizer" if clip else "PreTrainedTokenizerFast", **specials,
              "model_max_length": max_length, "clean_up_tokenization_spaces": False}
    files = [_write(directory / "tokenizer.json", json.dumps(data)),
             _write(directory / "tokenizer_config.json", json.dumps(config, indent=2)),
             _write(directory / "special_tokens_map.json", json.dumps(specials, indent=2))]
    if clip:                   # the slow-tokenizer files, which CLIPTokenizer also reads (and our load_clip_bpe)
        vocab = tok.tokenizer.get_vocab(with_added_tokens=True)
        files.append(_write(directory / "vocab.json", json.dumps(dict(sorted(vocab.items(), key=lambda kv: kv[1])))))
        merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
        files.append(_write(directory / "merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n"))
    return files


def _bos_eos_template(bos: str, bos_id: int, eos: str, eos_id: int) -> dict[str, Any]:
    """tokenizers' TemplateProcessing that adds bos ... eos (a pair: bos A eos B eos), as JSON."""
    def special(token: str, type_id: int = 0) -> dict[str, Any]:
        return {"SpecialToken": {"id": token, "type_id": type_id}}

    def sequence(name: str, type_id: int = 0) -> dict[str, Any]:
        return {"Sequence": {"id": name, "type_id": type_id}}

    return {"type": "TemplateProcessing", "single": [special(bos), sequence("A"), special(eos)],
            "pair": [special(bos), sequence("A"), special(eos), sequence("B", 1), special(eos, 1)],
            "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]},
                               eos: {"id": eos, "ids": [eos_id], "tokens": [eos]}}}


def _write(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def read_hf_tokenizer(directory: str | Path, max_length: int) -> Any:
    """The tokenizer of an HF CLIP directory as a TextTokenizer: CLIP's BPE (tokenizer.json, or vocab.json +
    merges.txt), or, where tokenizer_config.json names another class (what write_hf_tokenizer writes for a
    word-level vocabulary), tokenizer.json with the special tokens that file names. None without tokenizer files."""
    from ..text.clip_bpe import load_clip_bpe
    from ..text.tokenizer import SpecialTokens, TextTokenizer

    directory = Path(directory)
    if not ((directory / "tokenizer.json").is_file() or (directory / "vocab.json").is_file()):
        return None
    config_file = directory / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    if config.get("tokenizer_class", "CLIPTokenizer").removesuffix("Fast") == "CLIPTokenizer":
        return load_clip_bpe(directory, max_length=max_length)
    if not (directory / "tokenizer.json").is_file():
        raise VitlabError(f"{directory}: tokenizer_config.json names {config['tokenizer_class']} but there is no "
                          "tokenizer.json")
    from tokenizers import Tokenizer

    names = {k: config.get(f"{k}_token") for k in ("pad", "bos", "eos", "unk")}
    missing = [f"{k}_token" for k, v in names.items() if not isinstance(v, str)]
    if missing:
        raise VitlabError(f"{config_file}: {', '.join(missing)} missing (needed to read a non-CLIP tokenizer)")
    return TextTokenizer(Tokenizer.from_file(str(directory / "tokenizer.json")), SpecialTokens(**names), max_length)


def _swap_ids(data: dict[str, Any], swap: tuple[int, int]) -> dict[str, Any]:
    """A tokenizer.json dict with two ids exchanged in its vocabulary and its added tokens."""
    data = json.loads(json.dumps(data))
    vocab = data["model"].get("vocab")
    if isinstance(vocab, dict):
        data["model"]["vocab"] = {t: swapped(i, swap) for t, i in vocab.items()}
    else:
        raise VitlabError(f"cannot renumber a {data['model'].get('type')} tokenizer for transformers")
    for added in data.get("added_tokens") or []:
        added["id"] = swapped(int(added["id"]), swap)
    return data
