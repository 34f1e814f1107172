"""Image captioning (Show, Attend and Tell): teacher-forced cross-entropy, greedy/beam decoding, the captioning
field's scorer, and where each generated word looked.

Data: `scenes` (generated captions with object masks) or a captions file / folder (vitlab.data.captions); a target
is {"ids": (B, L)}: bos, words, eos, pad. The vocabulary (a word-level tokenizer of the training captions) is the
model's `num_classes`; the tokenizer travels in the checkpoint's config under "task_extras".

Metrics: pycocoevalcap's BLEU-1..4 (0-1), CIDEr-D and ROUGE-L on captions tokenised as its PTBTokenizer leaves
these ones (lower case, punctuation dropped; the Java tokenizer itself is not run); METEOR (Java) on request,
skipped if it fails; the exact-match rate; and the attention grounding score: for every generated word that names
an object ("star", with its colour word before it when there is one), the share of that word's attention that
falls inside the named object's mask, beside the share a uniform attention would put there (the mask's area
fraction). Primary metric: `val_bleu4`.
"""
from __future__ import annotations

import logging
import string
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import VitlabError
from ..runtime import autocast
from ..text.tokenizer import TextTokenizer
from .base import Task, mean_std, refuse_classification_options

log = logging.getLogger(__name__)

EPOCH_METRICS = ("val_loss", "val_bleu4", "val_cider", "val_grounding")
FINAL_KEYS = ("val_bleu1", "val_bleu2", "val_bleu3", "val_bleu4", "val_cider", "val_rougeL", "val_meteor",
              "val_exact", "val_grounding", "val_grounding_uniform", "val_grounded_words", "val_loss")
_PUNCT = str.maketrans({c: " " for c in string.punctuation})


# --- scores ----------------------------------------------------------------------------------------------------------
def coco_tokens(text: str) -> str:
    """What pycocoevalcap's PTBTokenizer leaves of a caption like ours: lower case, punctuation removed, words
    separated by one space."""
    return " ".join(text.lower().translate(_PUNCT).split())


def caption_scores(hypotheses: Sequence[str], references: Sequence[Sequence[str]],
                   meteor: bool = False) -> dict[str, float]:
    """pycocoevalcap's corpus scores of one hypothesis per image against its references: val_bleu1..4 (0-1),
    val_cider, val_rougeL, (val_meteor when `meteor` and Java runs it) and val_exact (share of hypotheses equal to
    one of their references after tokenisation)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if len(hypotheses) != len(references) or not hypotheses:
        raise VitlabError(f"{len(hypotheses)} hypotheses for {len(references)} reference sets")
    res = {i: [coco_tokens(h)] for i, h in enumerate(hypotheses)}
    gts = {i: [coco_tokens(r) for r in refs] for i, refs in enumerate(references)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out = {f"val_bleu{n + 1}": float(b) for n, b in enumerate(bleu)}
    out["val_cider"] = float(Cider().compute_score(gts, res)[0])
    out["val_rougeL"] = float(Rouge().compute_score(gts, res)[0])
    if meteor:
        try:
            from pycocoevalcap.meteor.meteor import Meteor

            scorer = Meteor()
            out["val_meteor"] = float(scorer.compute_score(gts, res)[0])
            scorer.close() if hasattr(scorer, "close") else None
        except Exception as e:        # Java missing or the jar failing: METEOR is optional
            log.warning("METEOR skipped: %s", str(e).splitlines()[0][:120] if str(e) else type(e).__name__)
    out["val_exact"] = sum(res[i][0] in gts[i] for i in res) / len(res)
    return out


def patch_fractions(mask: Tensor, grid: tuple[int, int]) -> Tensor:
    """(S, S) bool mask -> (gh * gw,) the share of each image token's pixels inside it (row-major tokens)."""
    return F.adaptive_avg_pool2d(mask[None, None].float(), grid).flatten()


def grounding(words: Sequence[str], attention: Tensor, objects: Sequence[Any],
              grid: tuple[int, int]) -> list[tuple[float, float]]:
    """For each word of one generated caption that names an object of the image: (the share of the word's
    attention inside that object's mask, the mask's area share = what uniform attention would give).

    words: the caption's tokens; attention (len(words), N): each word's attention over the N image tokens (a
    token's weight spread evenly over its pixels); objects: with .shape, .colour, .mask (S, S). A shape word names
    the objects of that shape, and of the colour word before it when there is one; a word naming no object of the
    image (a wrong caption) is not scored."""
    from ..data.scenes import PALETTE
    from ..data.shapes import SHAPE_CLASSES

    out = []
    for t, word in enumerate(words):
        if word not in SHAPE_CLASSES:
            continue
        colour = words[t - 1] if t > 0 and words[t - 1] in PALETTE else None
        named = [o for o in objects if o.shape == word and (colour is None or o.colour == colour)]
        if not named:
            continue
        mask = torch.stack([o.mask.bool() for o in named]).any(0)
        frac = patch_fractions(mask, grid).to(attention.device)              # (N,)
        out.append((float((attention[t].float() * frac).sum()), float(frac.mean())))
    return out


# --- decoding ---------------------------------------------------------------------------------------------------------
@dataclass
class Caption:
    text: str
    words: list[str]             # the generated tokens as strings (no bos/eos), one per attention row
    attention: Tensor            # (len(words), N) float, on the CPU


def caption_tokenizer(model: nn.Module) -> TextTokenizer:
    """The tokenizer a captioner was trained with: model.tokenizer (set by restore_extras), else the checkpoint's
    config "task_extras"."""
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        extras = (getattr(model, "vitlab_meta", None) or {}).get("task_extras") or {}
        if "tokenizer" not in extras:
            raise VitlabError(f"{getattr(model, 'vitlab_name', type(model).__name__)}: no tokenizer (a fresh model "
                              "or a checkpoint without task_extras); pass the run directory of a captioning run")
        tok = TextTokenizer.from_dict(extras["tokenizer"])
        model.tokenizer = tok
    return tok


def _token_words(tok: TextTokenizer, ids: Sequence[int]) -> list[str]:
    vocab = tok.tokens()
    return [vocab[i].replace("\u2581", "").strip() or vocab[i] for i in ids]


@torch.no_grad()
def generate_captions(model: nn.Module, x: Tensor, tokenizer: TextTokenizer, *, beam_size: int = 1,
                      length_penalty: float = 0.6) -> list[Caption]:
    """Captions of normalised images x (B, 3, S, S): greedy (beam_size 1) or beam search, then one teacher-forced
    pass over [bos] + the caption for each word's attention."""
    from ..text.decoding import beam_search, greedy_decode
    from ..text.tokenizer import pad_ids

    was_training = model.training
    model.eval()
    try:
        memory = model.encode(x)
        max_len = min(model.cfg.max_len - 1, tokenizer.max_length - 2)
        step = model.step_fn(memory)
        args = (step, len(x), tokenizer.bos_id, tokenizer.eos_id, max_len)
        seqs = greedy_decode(*args, device=x.device) if beam_size == 1 else \
            beam_search(*args, beam_size=beam_size, length_penalty=length_penalty, device=x.device)
        ids, _ = pad_ids([[tokenizer.bos_id, *s] for s in seqs], tokenizer.pad_id)
        attention = model.decode(ids.to(x.device), memory, return_attention=True)["attention"].float().cpu()
    finally:
        model.train(was_training)
    return [Caption(tokenizer.decode(s), _token_words(tokenizer, s), attention[b, :len(s)])
            for b, s in enumerate(seqs)]


# --- training parts ---------------------------------------------------------------------------------------------------
class CaptionAugment(nn.Module):
    """(uint8 images, targets) -> (normalised images, targets). No flips or crops: they would move objects
    against the words "left", "right", "above" and "below" of the captions."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: Tensor, targets: Any) -> tuple[Tensor, Any]:
        return (images.float() / 255.0 - self.mean) / self.std, targets


class CaptionObjective:
    """Teacher forcing: the caption's tokens 0..L-2 in, 1..L-1 predicted. Parts: `caption_ce` (label-smoothed
    cross-entropy per real token) and, for an LSTM with lambda > 0, `attention_reg`: lambda * eq. 14 summed over
    the batch's images, divided by the same token count (the paper's loss, -log p summed over words + lambda *
    penalty, per token)."""

    def __init__(self, pad_id: int, label_smoothing: float = 0.0, doubly_stochastic: float = 0.0) -> None:
        self.pad_id, self.label_smoothing, self.doubly_stochastic = pad_id, label_smoothing, doubly_stochastic

    def __call__(self, model: nn.Module, x: Tensor, targets: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        from ..models.captioning import doubly_stochastic_penalty

        ids = targets["ids"]
        inputs, labels = ids[:, :-1], ids[:, 1:]                              # (B, L-1) each
        out = model(x, inputs)
        logits = out["logits"].float()                                        # (B, L-1, vocab)
        real = labels != self.pad_id
        count = real.sum().clamp(min=1)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=self.pad_id,
                             label_smoothing=self.label_smoothing, reduction="sum")
        parts = {"caption_ce": ce / count}
        if self.doubly_stochastic > 0 and out.get("attention") is not None:
            penalty = doubly_stochastic_penalty(out["attention"].float(), real)   # (B,)
            parts["attention_reg"] = self.doubly_stochastic * penalty.sum() / count
        return sum(parts.values()), parts


# --- the task ---------------------------------------------------------------------------------------------------------
class CaptioningTask(Task):
    name = "captioning"
    primary_metric = "val_bleu4"
    epoch_metrics = EPOCH_METRICS
    decodes_text = True

    def __init__(self, beam_size: int = 1, report_images: int = 3) -> None:
        self.beam_size = beam_size              # 1 = greedy (evaluation and predict)
        self.report_images = report_images      # validation images in the run's attention figure

    def check_config(self, cfg: Any) -> None:
        refuse_classification_options(cfg, "captioning", "none: a flip or crop would contradict the captions' "
                                      "left/right/above/below")
        if "doubly_stochastic" in cfg.model_args:
            from ..registry import default_config

            if default_config(cfg.model, **cfg.model_args).get("decoder") != "lstm":
                raise VitlabError(f"--model-arg doubly_stochastic: the LSTM decoder's attention regulariser (eq. 14); "
                                  f"{cfg.model} has a transformer decoder")

    def build_data(self, cfg: Any, image_size: int) -> Any:
        from ..data.captions import build_caption_data
        from ..registry import default_config

        max_len = int(default_config(cfg.model, **cfg.model_args).get("max_len", 40))
        return build_caption_data(cfg.data, image_size, seed=cfg.seed, val_fraction=cfg.val_fraction,
                                  max_length=max_len)

    def num_train_batches(self, data: Any, batch_size: int, world_size: int = 1) -> int:
        from ..data.loader import num_batches

        return num_batches(len(data.train.pairs()), batch_size, True, world_size)

    def train_batches(self, data: Any, batch_size: int, *, epoch: int, seed: int, rank: int = 0,
                      world_size: int = 1, workers: int = 0) -> Iterator[tuple[Tensor, Any]]:
        from ..data.captions import caption_batches

        return caption_batches(data.train, data.tokenizer, batch_size, shuffle=True, seed=seed, epoch=epoch,
                               drop_last=True, rank=rank, world_size=world_size)

    def augment(self, cfg: Any, model: nn.Module, data: Any, image_size: int) -> nn.Module:
        model.tokenizer = data.tokenizer      # evaluate() decodes with it
        return CaptionAugment(*mean_std(model))

    def objective(self, cfg: Any, model: nn.Module, device: torch.device) -> Any:
        tok = caption_tokenizer(model)
        reg = model.cfg.doubly_stochastic if model.cfg.decoder == "lstm" else 0.0
        return CaptionObjective(tok.pad_id, cfg.label_smoothing, reg)

    def checkpoint_extras(self, data: Any) -> dict[str, Any]:
        return {"tokenizer": data.tokenizer.to_dict()}

    def restore_extras(self, model: nn.Module, extras: dict[str, Any]) -> None:
        if "tokenizer" in (extras or {}):
            model.tokenizer = TextTokenizer.from_dict(extras["tokenizer"])

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset: Any, device: torch.device, precision: str = "fp32",
                 batch_size: int = 128, workers: int = 0, *, beam_size: int | None = None,
                 length_penalty: float = 0.6) -> dict[str, Any]:
        """Scores of the captions over `dataset` (module docstring; greedy unless beam_size > 1, default the
        task's), val_loss (teacher-forced CE, no smoothing) and `samples`: the first captions with their
        attention, for the report."""
        beam_size = self.beam_size if beam_size is None else beam_size
        from ..text.tokenizer import pad_ids

        if not len(dataset):
            raise VitlabError("the validation set is empty")
        tok = caption_tokenizer(model)
        mean, std = mean_std(model)
        normalize = CaptionAugment(mean, std).to(device)
        objective = CaptionObjective(tok.pad_id)
        captions: list[Caption] = []
        loss_sum, tokens = 0.0, 0
        was_training = model.training
        model.eval()
        try:
            for start in range(0, len(dataset), batch_size):
                x, _ = normalize(dataset.images[start:start + batch_size].to(device), None)
                refs = [r[0] for r in dataset.references[start:start + batch_size]]
                ids, _ = pad_ids([tok.encode(r, truncate=True) for r in refs], tok.pad_id)
                ids = ids.to(device)
                with autocast(device, precision):
                    loss, _ = objective(model, x, {"ids": ids})
                    captions += generate_captions(model, x, tok, beam_size=beam_size,
                                                  length_penalty=length_penalty)
                n = int((ids[:, 1:] != tok.pad_id).sum())
                loss_sum, tokens = loss_sum + float(loss) * n, tokens + n
        finally:
            model.train(was_training)
        result: dict[str, Any] = caption_scores([c.text for c in captions], dataset.references)
        result["val_loss"] = loss_sum / max(tokens, 1)
        if dataset.objects is not None:
            pairs = [p for c, objs in zip(captions, dataset.objects)
                     for p in grounding(c.words, c.attention, objs, model.grid_size)]
            result["val_grounded_words"] = len(pairs)
            result["val_grounding"] = sum(p[0] for p in pairs) / len(pairs) if pairs else None
            result["val_grounding_uniform"] = sum(p[1] for p in pairs) / len(pairs) if pairs else None
        else:
            result.update(val_grounding=None, val_grounding_uniform=None, val_grounded_words=0)
        result["samples"] = captions[:8]
        return result

    def explain(self, model: nn.Module, inputs: list[str], out: Path, *, data: str | None = None,
                samples: int = 4) -> dict[str, Any] | None:
        from ..explain.captioning import explain_captions

        return explain_captions(model, inputs, out, data=data, samples=samples)

    def loss_note(self, cfg: Any, model: nn.Module, data: Any) -> str | None:
        if cfg.label_smoothing > 0:
            return (f"training loss: label-smoothed ({cfg.label_smoothing:g}) cross-entropy per word"
                    + (" + eq. 14's attention penalty" if model.cfg.decoder == "lstm" else "")
                    + "; validation loss: plain cross-entropy")
        return None

    def epoch_line(self, result: dict[str, Any]) -> str:
        line = f"val loss {result['val_loss']:.3f}  BLEU-4 {result['val_bleu4']:.3f}  CIDEr {result['val_cider']:.3f}"
        if result.get("val_grounding") is not None:
            line += f"  grounding {result['val_grounding']:.3f} (uniform {result['val_grounding_uniform']:.3f})"
        return line

    def final_metrics(self, result: dict[str, Any], data: Any) -> dict[str, Any]:
        return {**{k: result[k] for k in FINAL_KEYS if k in result}, "vocab_size": data.tokenizer.vocab_size}

    def report(self, out: Path, model: nn.Module, data: Any, result: dict[str, Any],
               history: list[dict[str, Any]]) -> list[Path]:
        from ..explain.captioning import caption_figure

        n = min(self.report_images, len(data.val))
        device = next(model.parameters()).device
        images = data.val.images[:n]
        x, _ = CaptionAugment(*mean_std(model)).to(device)(images.to(device), None)
        caps = generate_captions(model, x, caption_tokenizer(model), beam_size=self.beam_size)
        truth = [refs[0] for refs in data.val.references[:n]]
        return [caption_figure(images, caps, model.grid_size, out / "captioning_attention.png", truth=truth)]

    def predict(self, predictor: Any, paths: list[str], *, out: Path | None = None, top_k: int = 5,
                threshold: float = 0.5, beam_size: int | None = None, length_penalty: float = 0.6) -> list[str]:
        """One line per image: its caption (greedy unless beam_size > 1; default the task's). With `out`,
        OUT/captions.json as well."""
        beam_size = self.beam_size if beam_size is None else beam_size
        model = predictor.model
        tok = caption_tokenizer(model)
        images = predictor.load_images(paths)
        with autocast(predictor.device, predictor.precision):
            caps = generate_captions(model, predictor.normalize(images.to(predictor.device)), tok,
                                     beam_size=beam_size, length_penalty=length_penalty)
        if out is not None:
            from ..io import write_json

            Path(out).mkdir(parents=True, exist_ok=True)
            write_json(Path(out) / "captions.json", [{"image": str(p), "caption": c.text}
                                                     for p, c in zip(paths, caps)])
        return [f"{p}: {c.text}" for p, c in zip(paths, caps)]

    def summary(self, metrics: dict[str, Any]) -> str:
        line = (f"BLEU-4 {metrics['val_bleu4']:.3f}  CIDEr {metrics['val_cider']:.3f}  "
                f"ROUGE-L {metrics['val_rougeL']:.3f}  exact {metrics['val_exact'] * 100:.1f}%")
        if metrics.get("val_grounding") is not None:
            line += (f"  grounding {metrics['val_grounding']:.3f} (uniform "
                     f"{metrics['val_grounding_uniform']:.3f})")
        return line


TASK = CaptioningTask()
