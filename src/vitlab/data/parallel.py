"""Parallel text for translation: sentence pairs (source, target) as train and val splits.

Two data specs:

    numbers-en-fr                 numbers written in English words -> the same number in French words, generated
                                  offline by num2words (Savoir-faire Linux's package, both languages); the
                                  validation numbers are held out: none of them is in the training set.
    parallel:SRC_FILE,TGT_FILE    a user's parallel text, one sentence a line, line i of SRC_FILE translated by line
                                  i of TGT_FILE (UTF-8); a seeded val_fraction of the pairs is held out.

French numbers need real reordering and many-to-one alignments: "ninety-seven" -> "quatre-vingt-dix-sept"
(4 x 20 + 10 + 7), "seventy-one" -> "soixante et onze", "two hundred" -> "deux cents" but "two hundred and one"
-> "deux cent un", "one thousand, two hundred" -> "mille deux cents".
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import VitlabError

log = logging.getLogger(__name__)

NUMBERS_SPEC = "numbers-en-fr"
PARALLEL_PREFIX = "parallel:"
TEXT_SPECS_HELP = f"expected {NUMBERS_SPEC} or {PARALLEL_PREFIX}SRC_FILE,TGT_FILE (one sentence a line)"

# numbers-en-fr: NUMBERS_TRAIN + NUMBERS_VAL distinct numbers from [0, NUMBERS_MAX), each draw taking its number of
# digits (1 to 6) uniformly, then a number of that many digits: short numbers ("ninety-seven") are as common as
# long ones, not 0.01% of a uniform draw. NUMBERS_VAL of them, drawn at random, are held out for validation.
NUMBERS_MAX = 1_000_000
NUMBERS_TRAIN = 20_000
NUMBERS_VAL = 1_000
NUMBERS_SEED = 13         # fixed: the held-out numbers are the same in every run (--seed shuffles batches only)


@dataclass
class ParallelText:
    """Sentence pairs of one split; `numbers` holds the integers of numbers-en-fr (empty for files)."""
    pairs: list[tuple[str, str]]
    numbers: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[str, str]:
        return self.pairs[i]

    @property
    def sources(self) -> list[str]:
        return [s for s, _ in self.pairs]

    @property
    def targets(self) -> list[str]:
        return [t for _, t in self.pairs]


@dataclass
class ParallelData:
    """What a translation data spec gives: the two splits, the skipped lines ("FILE:LINE: why") and a name."""
    train: ParallelText
    val: ParallelText
    name: str
    skipped: list[str] = field(default_factory=list)


def build_parallel_data(spec: str, *, val_fraction: float = 0.25, seed: int = 0) -> ParallelData:
    """A translation data spec -> ParallelData. Raises VitlabError (one line) on a spec it does not know."""
    if spec == NUMBERS_SPEC:
        return numbers_en_fr()
    if spec.startswith(PARALLEL_PREFIX):
        files = spec[len(PARALLEL_PREFIX):].split(",")
        if len(files) != 2 or not all(f.strip() for f in files):
            raise VitlabError(f"{spec}: {TEXT_SPECS_HELP}")
        return read_parallel_files(files[0].strip(), files[1].strip(), val_fraction=val_fraction, seed=seed,
                                   name=spec)
    raise VitlabError(f"{spec}: not a translation data set; {TEXT_SPECS_HELP}")


def english_french(n: int) -> tuple[str, str]:
    """(English words, French words) of the integer n, as num2words writes them."""
    from num2words import num2words

    return num2words(n, lang="en"), num2words(n, lang="fr")


def numbers_en_fr(train_size: int = NUMBERS_TRAIN, val_size: int = NUMBERS_VAL, high: int = NUMBERS_MAX,
                  seed: int = NUMBERS_SEED) -> ParallelData:
    """numbers-en-fr: train_size + val_size distinct numbers from [0, high), their digit counts uniform (see
    NUMBERS_TRAIN); val_size of them, at random, held out."""
    if train_size + val_size > high:
        raise VitlabError(f"{train_size} + {val_size} numbers do not fit in [0, {high})")
    rng, digits = random.Random(seed), len(str(high - 1))
    chosen: dict[int, None] = {}                       # insertion-ordered set: the draw order is reproducible
    while len(chosen) < train_size + val_size:
        d = rng.randint(1, digits)
        low = 0 if d == 1 else 10 ** (d - 1)
        chosen[rng.randrange(low, min(10 ** d, high))] = None
    drawn = list(chosen)
    rng.shuffle(drawn)
    val, train = sorted(drawn[:val_size]), drawn[val_size:]
    return ParallelData(ParallelText([english_french(n) for n in train], train),
                        ParallelText([english_french(n) for n in val], val), NUMBERS_SPEC)


def read_parallel_files(source: str | Path, target: str | Path, *, val_fraction: float = 0.25, seed: int = 0,
                        name: str | None = None) -> ParallelData:
    """Line i of `source` with line i of `target`. Files of different line counts are refused; a pair with an
    empty side is skipped, named and counted; a seeded val_fraction of the pairs (at least one) is held out."""
    lines = [_read_lines(Path(p)) for p in (source, target)]
    if len(lines[0]) != len(lines[1]):
        raise VitlabError(f"{source} has {len(lines[0])} lines but {target} has {len(lines[1])}: not parallel "
                          "(line i of one must translate line i of the other)")
    pairs, skipped = [], []
    for i, (src, tgt) in enumerate(zip(*lines), start=1):
        src, tgt = src.strip(), tgt.strip()
        if not src or not tgt:
            skipped.append(f"{source if not src else target}:{i}: empty line")
            continue
        pairs.append((src, tgt))
    if skipped:
        log.warning("%s: %d of %d line pairs skipped (empty): %s", name or source, len(skipped), len(lines[0]),
                    "; ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else ""))
    if len(pairs) < 2:
        raise VitlabError(f"{source}, {target}: {len(pairs)} usable sentence pairs; need at least 2 (one to train "
                          "on, one to validate)")
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_val = min(len(pairs) - 1, max(1, round(val_fraction * len(pairs))))
    val = [pairs[i] for i in sorted(order[:n_val])]
    train = [pairs[i] for i in sorted(order[n_val:])]
    return ParallelData(ParallelText(train), ParallelText(val), name or f"{PARALLEL_PREFIX}{source},{target}",
                        skipped)


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise VitlabError(f"{path}: no such file ({TEXT_SPECS_HELP})")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise VitlabError(f"{path}: not UTF-8 text (byte {e.start})") from None
