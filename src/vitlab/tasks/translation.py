"""Translation: sentence pairs, token-level cross-entropy with label smoothing, exact match and BLEU.

Data: `numbers-en-fr` (generated offline, held-out numbers) or `parallel:SRC_FILE,TGT_FILE`
(vitlab.data.parallel). One word-level vocabulary (vitlab.text.build_word_level) is built from the training
sentences of both languages; the checkpoint stores it (config.json "task_extras": {"tokenizer": ...}), so predict
and explain read text with the vocabulary the model learnt. A batch is (source ids (B, S), target ids (B, T)), both
right-padded with pad 0, bos first and eos last.

Metrics (greedy decoding on the validation sentences): `val_exact`, the percentage of sentences translated exactly
(the whole string equal to the reference), and `val_bleu`, sacrebleu's corpus BLEU (0-100, its default 13a
tokenisation) — the field's scorer, not ours. Primary: `val_exact`.
"""
from __future__ import annotations

import html
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import VitlabError
from ..runtime import autocast
from .base import Task, refuse_classification_options

log = logging.getLogger(__name__)

MAX_TOKENS = 64            # tokens per sentence, bos and eos included; longer training pairs are skipped
EPOCH_METRICS = ("val_loss", "val_exact", "val_bleu")


@dataclass
class TranslationData:
    """The splits (vitlab.data.parallel.ParallelText), the vocabulary and the training pairs as ids."""
    train: Any
    val: Any
    tokenizer: Any
    name: str
    skipped: list[str] = field(default_factory=list)
    train_ids: list[tuple[list[int], list[int]]] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:           # the model's output classes: the (target) vocabulary
        return self.tokenizer.tokens()


class TranslationTask(Task):
    name = "translation"
    primary_metric = "val_exact"
    epoch_metrics = EPOCH_METRICS
    takes_images = False
    decodes_text = True

    def check_config(self, cfg: Any) -> None:
        refuse_classification_options(cfg, "translation", "none: sentences are read as they are")
        image_only = [flag for flag, on in (("--img-size", cfg.img_size is not None), ("--hflip", bool(cfg.hflip)),
                                            ("--channels-last", cfg.channels_last)) if on]
        if image_only:
            raise VitlabError(f"{', '.join(image_only)}: image options; {cfg.model} is a translation model (text)")

    def build_data(self, cfg: Any, image_size: int | None) -> TranslationData:
        from ..data.parallel import build_parallel_data
        from ..text import build_word_level

        parallel = build_parallel_data(cfg.data, val_fraction=cfg.val_fraction, seed=cfg.seed)
        tokenizer = build_word_level(parallel.train.sources + parallel.train.targets, max_length=MAX_TOKENS)
        skipped, train_ids = list(parallel.skipped), []
        for i, (src, tgt) in enumerate(parallel.train.pairs):
            ids = tokenizer.encode(src, truncate=True), tokenizer.encode(tgt, truncate=True)
            if max(len(tokenizer.words(src)), len(tokenizer.words(tgt))) + 2 > MAX_TOKENS:
                skipped.append(f"training pair {i + 1}: longer than {MAX_TOKENS} tokens")
                continue
            train_ids.append(ids)
        if len(skipped) > len(parallel.skipped):
            log.warning("%s: %d training pairs longer than %d tokens skipped", cfg.data,
                        len(skipped) - len(parallel.skipped), MAX_TOKENS)
        if not train_ids:
            raise VitlabError(f"{cfg.data}: no training sentence pair of at most {MAX_TOKENS} tokens")
        log.info("%s: %d training / %d validation sentence pairs, vocabulary of %d tokens", parallel.name,
                 len(train_ids), len(parallel.val), tokenizer.vocab_size)
        return TranslationData(parallel.train, parallel.val, tokenizer, parallel.name, skipped, train_ids)

    def checkpoint_extras(self, data: TranslationData) -> dict[str, Any]:
        return {"tokenizer": data.tokenizer.to_dict()}

    def restore_extras(self, model: nn.Module, extras: dict[str, Any]) -> None:
        from ..text import TextTokenizer

        if "tokenizer" not in extras:
            raise VitlabError("this translation checkpoint has no tokenizer in config.json (task_extras)")
        tok = TextTokenizer.from_dict(extras["tokenizer"])
        cfg = model.cfg
        ours, theirs = (tok.pad_id, tok.bos_id, tok.eos_id, tok.vocab_size), (cfg.pad_id, cfg.bos_id, cfg.eos_id,
                                                                              cfg.num_classes)
        if ours != theirs:
            raise VitlabError(f"the tokenizer (pad, bos, eos, vocabulary) {ours} does not fit the model's {theirs}")
        model.tokenizer = tok

    def num_train_batches(self, data: TranslationData, batch_size: int, world_size: int = 1) -> int:
        return len(data.train_ids) // world_size // batch_size

    def train_batches(self, data: TranslationData, batch_size: int, *, epoch: int, seed: int, rank: int = 0,
                      world_size: int = 1, workers: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        from ..text import pad_ids

        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(len(data.train_ids), generator=g)[rank::world_size].tolist()
        pad = data.tokenizer.pad_id
        for start in range(0, len(order) - batch_size + 1, batch_size):
            rows = [data.train_ids[i] for i in order[start:start + batch_size]]
            src, _ = pad_ids([r[0] for r in rows], pad)
            tgt, _ = pad_ids([r[1] for r in rows], pad)
            yield src, tgt                                                    # (B, S), (B, T) long

    def augment(self, cfg: Any, model: nn.Module, data: Any, image_size: int | None) -> nn.Module:
        return PassThrough()

    def objective(self, cfg: Any, model: nn.Module, device: torch.device) -> Any:
        return TranslationObjective(cfg.label_smoothing, model.cfg.pad_id)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset: Any, device: torch.device, precision: str = "fp32",
                 batch_size: int = 256, workers: int = 0, *, beam_size: int = 1,
                 length_penalty: float | None = None) -> dict[str, Any]:
        """Translations of the split (greedy unless beam_size > 1; length_penalty: default the model's):
        val_exact (%), val_bleu (sacrebleu corpus BLEU), val_loss (token cross-entropy without smoothing,
        teacher-forced), and `samples` (source, reference, hypothesis) x 8."""
        if not len(dataset):
            raise VitlabError("the validation set is empty")
        tok = _tokenizer(model)
        was_training = model.training
        model.eval()
        hyps, nll_sum, tokens = [], 0.0, 0
        try:
            for start in range(0, len(dataset), batch_size):
                pairs = dataset.pairs[start:start + batch_size]
                src, src_mask = tok.encode_batch([s for s, _ in pairs], truncate=True)
                tgt, _ = tok.encode_batch([t for _, t in pairs], truncate=True)
                src, src_mask, tgt = src.to(device), src_mask.to(device), tgt.to(device)
                with autocast(device, precision):
                    logits = model(src, tgt[:, :-1], src_mask)["logits"].float()
                    ids = model.generate(src, src_mask, beam_size=beam_size, length_penalty=length_penalty)
                nll_sum += float(F.cross_entropy(logits.flatten(0, 1), tgt[:, 1:].flatten(),
                                                 ignore_index=tok.pad_id, reduction="sum"))
                tokens += int((tgt[:, 1:] != tok.pad_id).sum())
                hyps += [tok.decode(i) for i in ids]
        finally:
            model.train(was_training)
        refs = dataset.targets
        return {**translation_scores(hyps, refs), "val_loss": nll_sum / max(tokens, 1),
                "samples": list(zip(dataset.sources[:8], refs[:8], hyps[:8]))}

    def epoch_line(self, result: dict[str, Any]) -> str:
        return f"val exact {result['val_exact']:.2f}%  BLEU {result['val_bleu']:.2f}  loss {result['val_loss']:.4f}"

    def final_metrics(self, result: dict[str, Any], data: TranslationData) -> dict[str, Any]:
        return {**{k: result[k] for k in ("val_exact", "val_bleu", "val_loss")},
                "vocab_size": data.tokenizer.vocab_size, "val_sentences": len(data.val),
                "train_sentences": len(data.train_ids)}

    def report(self, out: Path, model: nn.Module, data: TranslationData, result: dict[str, Any],
               history: list[dict[str, Any]]) -> list[Path]:
        """translations.txt (the first validation sentences: source, reference, greedy output) and the
        cross-attention alignment of the first one (alignment.png)."""
        from ..io import write_text

        lines = [f"{'OK ' if h == r else 'BAD'} {s}\n    ref {r}\n    got {h}" for s, r, h in result["samples"]]
        write_text(out / "translations.txt", "\n".join(lines) + "\n")
        figure = explain_translations(model, [data.val.sources[0]], out)["files"][0]
        return [out / "translations.txt", Path(figure)]

    def predict(self, predictor: Any, paths: list[str], *, out: Path | None = None, top_k: int = 5,
                threshold: float = 0.5, beam_size: int | None = None,
                length_penalty: float | None = None) -> list[str]:
        """The inputs are sentences; returns one translation per sentence (beam search; width and length
        penalty default the model's config, beam_size 1 is greedy)."""
        model = predictor.model
        check_sentences(_tokenizer(model), paths)
        return model.translate(list(paths), beam_size=beam_size, length_penalty=length_penalty)

    def explain(self, model: nn.Module, inputs: list[str], out: Path, *, data: str | None = None,
                samples: int = 4) -> dict[str, Any]:
        if not inputs:
            spec = data or (getattr(model, "vitlab_meta", None) or {}).get("data")
            if spec is None:
                raise VitlabError("give sentences to explain, or --data SPEC")
            from ..data.parallel import build_parallel_data

            val = build_parallel_data(spec).val
            inputs = [val.sources[int(i)] for i in torch.linspace(0, len(val) - 1, min(samples, len(val))).long()]
        check_sentences(_tokenizer(model), inputs)
        return explain_translations(model, inputs, out)

    def summary(self, metrics: dict[str, Any]) -> str:
        return f"val exact match {metrics['val_exact']:.2f}%  BLEU {metrics['val_bleu']:.2f}"


class PassThrough(nn.Module):
    """The batch transform of text: ids stay as they are (no augmentation)."""

    def forward(self, src: Tensor, tgt: Tensor) -> tuple[Tensor, Tensor]:
        return src, tgt


class TranslationObjective:
    """Teacher forcing: the decoder reads target[:, :-1] and predicts target[:, 1:]. Loss: cross-entropy with
    label smoothing (§5.4: 0.1), padding ignored; part `nll`: the same without smoothing (its floor is 0)."""

    def __init__(self, label_smoothing: float, pad_id: int) -> None:
        self.label_smoothing, self.pad_id = label_smoothing, pad_id

    def __call__(self, model: nn.Module, src: Tensor, tgt: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        logits = model(src, tgt[:, :-1], src != self.pad_id)["logits"].float()   # (B, T-1, V)
        flat, gold = logits.flatten(0, 1), tgt[:, 1:].flatten()
        loss = F.cross_entropy(flat, gold, ignore_index=self.pad_id, label_smoothing=self.label_smoothing)
        with torch.no_grad():
            nll = F.cross_entropy(flat, gold, ignore_index=self.pad_id)
        return loss, {"nll": nll}


def translation_scores(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """val_exact: sentences equal to their reference (percent); val_bleu: sacrebleu.corpus_bleu (0-100)."""
    import sacrebleu

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    exact = 100.0 * sum(h == r for h, r in zip(hypotheses, references)) / max(len(references), 1)
    return {"val_exact": exact, "val_bleu": float(sacrebleu.corpus_bleu(hypotheses, [references]).score)}


def check_sentences(tokenizer: Any, texts: list[str]) -> None:
    """Refuse, in one line, an empty sentence, one too long, or words the model's vocabulary does not hold."""
    for text in texts:
        if not text.strip():
            raise VitlabError("an empty sentence: give the text to translate")
        tokenizer.encode(text)                    # too long: VitlabError naming the length and the maximum
        enc = tokenizer.tokenizer.encode(text, add_special_tokens=False)
        unknown = [text[a:b].strip() for i, (a, b) in zip(enc.ids, enc.offsets) if i == tokenizer.unk_id]
        if unknown:
            shown = ", ".join(repr(w) for w in dict.fromkeys(unknown))
            raise VitlabError(f"{text[:60]!r}: not in the model's vocabulary: {shown}")


def cross_attention(model: nn.Module, text: str) -> tuple[list[str], list[str], Tensor, str]:
    """Translate `text` (beam search) and record the decoder's cross-attention while it reads its own
    translation: (source tokens, output tokens, weights (layers, heads, T, S), translation). Row t is the
    attention of the query that produces output token t (the last one is eos)."""
    from ..explain.recording import recording

    tok = _tokenizer(model)
    device = next(model.parameters()).device
    src, mask = tok.encode_batch([text])
    src, mask = src.to(device), mask.to(device)
    out_ids = model.generate(src, mask)[0]
    tgt = torch.tensor([[tok.bos_id, *out_ids]], device=device)                  # (1, T): bos + translation
    cross = nn.ModuleList(layer.cross_attn for layer in model.decoder.decoder.layers)
    with recording(cross) as recorded, torch.no_grad():
        model(src, tgt, mask)
    weights = torch.stack([w[0] for w in recorded]).float().cpu()               # (layers, heads, T, S)
    src_tokens = [tok.specials.bos, *tok.words(text), tok.specials.eos]
    out_tokens = [*[tok.tokens()[i] for i in out_ids], tok.specials.eos]
    return [t.lstrip("▁") for t in src_tokens], [t.lstrip("▁") for t in out_tokens], weights, tok.decode(out_ids)


def explain_translations(model: nn.Module, texts: list[str], out: Path) -> dict[str, Any]:
    """Per sentence: alignment_<i>.png (cross-attention averaged over layers and heads, source words x output
    words: the lecture's figure) and alignment_<i>_heads.png (each layer and head, and each layer's mean);
    index.html shows them. Returns the summary vitlab explain prints."""
    from ..io import write_text

    out.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    files, lines, rows = [], [], []
    try:
        for i, text in enumerate(texts):
            src_tokens, out_tokens, weights, translation = cross_attention(model, text)
            mean_png = plot_alignment(weights.mean((0, 1)), src_tokens, out_tokens, out / f"alignment_{i}.png",
                                      f"{text}\n-> {translation}\ncross-attention, mean of "
                                      f"{weights.shape[0]} layers x {weights.shape[1]} heads")
            heads_png = plot_alignment_grid(weights, src_tokens, out_tokens, out / f"alignment_{i}_heads.png")
            files += [str(mean_png), str(heads_png)]
            lines.append(f"{text} -> {translation}")
            rows.append(f"<h2>{html.escape(text)} &rarr; {html.escape(translation)}</h2>"
                        f"<img src='{mean_png.name}'><br><img src='{heads_png.name}'>")
    finally:
        model.train(was_training)
    report = out / "index.html"
    write_text(report, "<!doctype html><meta charset='utf-8'><title>vitlab explain: translation</title>"
                       "<h1>Cross-attention alignment</h1>" + "\n".join(rows) + "\n")
    return {"files": files, "lines": lines, "report": str(report), "figures": []}


def plot_alignment(weights: Tensor, src_tokens: list[str], out_tokens: list[str], path: Path,
                   title: str) -> Path:
    """One (T, S) attention matrix: output words down, source words across."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.0 + 0.45 * len(src_tokens), 1.4 + 0.4 * len(out_tokens)))
    _matrix(ax, weights, src_tokens, out_tokens)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def plot_alignment_grid(weights: Tensor, src_tokens: list[str], out_tokens: list[str], path: Path) -> Path:
    """weights (layers, heads, T, S): a row per layer, a column per head and a last column with its mean."""
    plt = _pyplot()
    L, H = weights.shape[:2]
    w, h = 0.3 * len(src_tokens) + 0.8, 0.28 * len(out_tokens) + 0.9
    fig, axes = plt.subplots(L, H + 1, figsize=(w * (H + 1), h * L), squeeze=False)
    for layer in range(L):
        for head in range(H + 1):
            m = weights[layer, head] if head < H else weights[layer].mean(0)
            ax = axes[layer, head]
            _matrix(ax, m, src_tokens, out_tokens, small=True)
            ax.set_title(f"layer {layer + 1} " + (f"head {head + 1}" if head < H else "mean"), fontsize=8)
    fig.suptitle("decoder cross-attention per layer and head (rows: output words, columns: source words)",
                 fontsize=9)
    return _save(fig, path)


def _matrix(ax: Any, m: Tensor, src_tokens: list[str], out_tokens: list[str], small: bool = False) -> None:
    ax.imshow(m.numpy(), cmap="gray_r", vmin=0.0, vmax=max(float(m.max()), 1e-6), aspect="auto",
              interpolation="nearest")
    size = 6 if small else 9
    ax.set_xticks(range(len(src_tokens)), src_tokens, rotation=90, fontsize=size)
    ax.set_yticks(range(len(out_tokens)), out_tokens, fontsize=size)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    from ..io import atomic_path

    plt = _pyplot()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return Path(path)


def _tokenizer(model: nn.Module) -> Any:
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise VitlabError(f"{getattr(model, 'vitlab_name', type(model).__name__)} has no tokenizer: pass a trained "
                          "run directory (vitlab train stores the vocabulary in its config.json)")
    return tok


TASK = TranslationTask()
