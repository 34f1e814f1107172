"""Contrastive image-text training (CLIP): symmetric InfoNCE over a batch of pairs; retrieval and zero-shot metrics.

Data: vitlab.data.image_text (`scenes`, a CSV filepath,caption, a COCO captions JSON). A target is the caption's
token ids (B, L); the tokenizer is a word-level vocabulary of the training captions (or the --checkpoint's own),
built in build_data (model_args gives the model its vocabulary size and end-of-text id), and is
saved with every checkpoint (task_extras) so zero-shot and predict can read prompts.

Metrics (metrics.json): val_i2t_r1/r5/r10 and val_t2i_* (fractions; identical captions count as matches),
val_median_rank / val_mean_rank (image -> text), val_zeroshot_top1 (percent: single-object val scenes classified by
shape from prompts, ensembled over templates as ENSEMBLES says), val_compositional_r5 (image -> text R@5 over the
val scenes that hold a colour-shape pair no training image held). Primary: val_i2t_r1.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import VitlabError
from .base import Task, mean_std, refuse_classification_options

log = logging.getLogger(__name__)

RETRIEVAL_KEYS = ("val_i2t_r1", "val_i2t_r5", "val_i2t_r10", "val_t2i_r1", "val_t2i_r5", "val_t2i_r10",
                  "val_median_rank", "val_mean_rank")
GENERIC_TEMPLATES = ("a photo of a {}", "a {}")
# scenes captions name size and colour before the shape: one prompt per (size, colour), the "prob" ensemble
SCENES_TEMPLATES = tuple(f"a {size} {colour} {{}}" for size in ("small", "large")
                         for colour in ("red", "green", "blue", "yellow", "purple", "orange", "cyan", "white"))
# How a class's prompts are combined. "mean": CLIP's ensemble in embedding space (the normalised mean of the
# normalised prompt embeddings). "prob": the ensemble in probability space, p(class) = sum over its prompts of
# softmax(scale * cos) over every class's prompts. When each prompt names a nuisance attribute the image shows
# (scenes: its one colour and size), only the matching prompt scores high; the mean blurs it with the 15
# prompts of other colours and sizes, while the sum over prompts marginalises the colour and size out.
ENSEMBLES = ("mean", "prob")


class ContrastiveTask(Task):
    name = "contrastive"
    primary_metric = "val_i2t_r1"
    explains_texts = True
    epoch_metrics = ("val_i2t_r1", "val_i2t_r5", "val_t2i_r1", "val_t2i_r5", "val_mean_rank", "val_zeroshot_top1",
                     "val_compositional_r5")

    def check_config(self, cfg: Any) -> None:
        refuse_classification_options(cfg, "contrastive image-text", "none: a flip or crop would falsify "
                                      "captions that say left/right/above")

    # --- data ------------------------------------------------------------------------------------------------------
    def build_data(self, cfg: Any, image_size: int) -> Any:
        from ..data.image_text import build_image_text_data
        from ..registry import default_config
        from ..text.tokenizer import TextTokenizer, build_word_level

        data = build_image_text_data(cfg.data, image_size, seed=cfg.seed, val_fraction=cfg.val_fraction)
        extras = _checkpoint_extras(cfg.checkpoint) if cfg.checkpoint else {}
        if "tokenizer" in extras:
            tok = TextTokenizer.from_dict(extras["tokenizer"])
        else:
            context = int(default_config(cfg.model, **cfg.model_args).get("context_length", 77))
            tok = build_word_level(data.train.captions + [t.format(c) for t in SCENES_TEMPLATES
                                                          for c in data.classes], max_length=context)
        data.tokenizer = tok
        data.templates = SCENES_TEMPLATES if data.name == "scenes" else GENERIC_TEMPLATES
        data.ensemble = default_ensemble(data.templates)
        for split in (data.train, data.val):
            split.ids = tok.encode_batch(split.captions, truncate=True)[0]           # (N, L)
            split.tokenizer, split.templates, split.classes = tok, data.templates, data.classes
            split.ensemble = data.ensemble
        return data

    def model_args(self, data: Any) -> dict[str, Any]:
        """The model's vocabulary is the data's tokenizer's."""
        return {"vocab_size": data.tokenizer.vocab_size, "eos_id": data.tokenizer.eos_id}

    def checkpoint_extras(self, data: Any) -> dict[str, Any]:
        return {"tokenizer": data.tokenizer.to_dict(), "templates": list(data.templates),
                "classes": list(data.classes), "ensemble": data.ensemble}

    def restore_extras(self, model: nn.Module, extras: dict[str, Any]) -> None:
        from ..text.tokenizer import TextTokenizer

        if extras.get("tokenizer"):
            model.tokenizer = TextTokenizer.from_dict(extras["tokenizer"])
        model.templates = tuple(extras.get("templates") or GENERIC_TEMPLATES)
        model.ensemble = extras.get("ensemble") or default_ensemble(model.templates)

    def num_train_batches(self, data: Any, batch_size: int, world_size: int = 1) -> int:
        return len(data.train) // (batch_size * world_size)

    def train_batches(self, data: Any, batch_size: int, *, epoch: int, seed: int, rank: int = 0,
                      world_size: int = 1, workers: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        g = torch.Generator().manual_seed(seed * 100003 + epoch)
        order = torch.randperm(len(data.train), generator=g)
        step = batch_size * world_size
        for start in range(0, len(order) - step + 1, step):
            idx = order[start + rank * batch_size: start + (rank + 1) * batch_size]
            yield data.train.images[idx], data.train.ids[idx]

    def augment(self, cfg: Any, model: nn.Module, data: Any, image_size: int) -> nn.Module:
        return PairTransform(*mean_std(model))

    def objective(self, cfg: Any, model: nn.Module, device: torch.device) -> Any:
        return ContrastiveObjective()

    # --- evaluation ------------------------------------------------------------------------------------------------
    def evaluate(self, model: nn.Module, dataset: Any, device: torch.device, precision: str = "fp32",
                 batch_size: int = 256, workers: int = 0) -> dict[str, Any]:
        return evaluate_pairs(model, dataset, device, precision, batch_size=batch_size)

    def epoch_line(self, result: dict[str, Any]) -> str:
        return (f"i2t R@1 {result['val_i2t_r1']:.3f} R@5 {result['val_i2t_r5']:.3f}  t2i R@1 "
                f"{result['val_t2i_r1']:.3f}  MnR {result['val_mean_rank']:.1f}"
                + (f"  zero-shot {result['val_zeroshot_top1']:.1f}%" if "val_zeroshot_top1" in result else ""))

    def final_metrics(self, result: dict[str, Any], data: Any) -> dict[str, Any]:
        return {k: v for k, v in result.items() if isinstance(v, (int, float))}

    def summary(self, metrics: dict[str, Any]) -> str:
        return self.epoch_line(metrics)

    def report(self, out: Path, model: nn.Module, data: Any, result: dict[str, Any],
               history: list[dict[str, Any]]) -> list[Path]:
        """similarity.png: the cosine similarities of the first val images and captions."""
        return [plot_similarity(result["similarity"], data.val.captions, out / "similarity.png")]

    def explain(self, model: nn.Module, inputs: list[str], out: Path, *, data: str | None = None,
                samples: int = 4, texts: Sequence[str] | None = None) -> dict[str, Any]:
        """Image-tower rollout, a text-conditioned map per prompt and the images x prompts similarity
        (vitlab.explain.clip); prompts default to the checkpoint's classes."""
        from ..explain.clip import explain_clip

        return explain_clip(model, inputs, out, texts=texts, data=data, samples=samples)

    def predict(self, predictor: Any, paths: list[str], *, out: Path | None = None, top_k: int = 5,
                threshold: float = 0.5, texts: Sequence[str] | None = None) -> list[str]:
        """Each image against `texts` (default: the checkpoint's classes through its templates): softmax over
        the prompts of the scaled cosine similarities, top-k per image."""
        model = predictor.model
        tok = clip_tokenizer(model)
        images = predictor.normalize(predictor.load_images(paths).to(predictor.device))
        with torch.no_grad():
            image_embeds = nn.functional.normalize(model.encode_image(images), dim=-1)         # (N, E)
            if texts:
                labels = list(texts)
                ids = tok.encode_batch(labels, truncate=True)[0].to(predictor.device)
                classifier = nn.functional.normalize(model.encode_text(ids), dim=-1)
                probs = (model.scale() * image_embeds @ classifier.t()).softmax(-1)
            else:
                labels = predictor.classes
                templates = getattr(model, "templates", GENERIC_TEMPLATES)
                ensemble = getattr(model, "ensemble", None) or default_ensemble(templates)
                probs = zero_shot_log_probs(model, tok, image_embeds.float(), labels, templates, ensemble,
                                            predictor.device).exp()
        lines = []
        for path, p in zip(paths, probs):
            top = p.topk(min(top_k, len(labels)))
            lines.append(f"{path}: " + ", ".join(f"{labels[int(i)]!r} {float(v):.3f}"
                                                  for v, i in zip(top.values, top.indices)))
        return lines


class PairTransform(nn.Module):
    """(uint8 images, ids) -> (normalised images, ids). No geometric augmentation: captions say where."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        from ..data.augment import Normalize

        self.normalize = Normalize(mean, std)

    def forward(self, images: Tensor, ids: Tensor) -> tuple[Tensor, Tensor]:
        return self.normalize(images), ids


class ContrastiveObjective:
    """model(images, ids) -> symmetric InfoNCE; identical captions in a batch are all positives of each other."""

    def __call__(self, model: nn.Module, images: Tensor, ids: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        from ..models.clip import clip_loss

        out = model(images, ids)
        same = (ids[:, None, :] == ids[None, :, :]).all(-1)                        # (B, B) identical captions
        loss = clip_loss(out["logits_per_image"].float(), same if bool((same.sum(1) > 1).any()) else None)
        return loss, {"infonce": loss.detach(), "logit_scale": unwrap_clip(model).scale().detach()}


def unwrap_clip(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


# --- library functions the CLI and tests call --------------------------------------------------------------------
def clip_tokenizer(model: nn.Module) -> Any:
    """The tokenizer a CLIP checkpoint was trained (or converted) with: model.tokenizer, else its task_extras."""
    from ..text.tokenizer import TextTokenizer

    tok = getattr(model, "tokenizer", None)
    if tok is None:
        extras = getattr(model, "vitlab_meta", {}).get("task_extras") or {}
        if not extras.get("tokenizer"):
            raise VitlabError(f"{getattr(model, 'vitlab_name', 'model')}: the checkpoint holds no tokenizer "
                              "(task_extras.tokenizer in config.json)")
        tok = TextTokenizer.from_dict(extras["tokenizer"])
        model.tokenizer = tok
        model.templates = tuple(extras.get("templates") or GENERIC_TEMPLATES)
        model.ensemble = extras.get("ensemble") or default_ensemble(model.templates)
    return tok


def default_ensemble(templates: Sequence[str]) -> str:
    """"prob" for scenes' (size, colour) templates (a checkpoint saved before `ensemble` was kept is read the same
    way), else CLIP's "mean"."""
    return "prob" if tuple(templates) == SCENES_TEMPLATES else "mean"


@torch.no_grad()
def encode_texts(model: nn.Module, tok: Any, texts: Sequence[str], device: torch.device,
                 batch_size: int = 256) -> Tensor:
    """Texts -> L2-normalised embeddings (N, E), float32."""
    out = []
    for start in range(0, len(texts), batch_size):
        ids = tok.encode_batch(list(texts[start:start + batch_size]), truncate=True)[0].to(device)
        out.append(nn.functional.normalize(model.encode_text(ids).float(), dim=-1))
    return torch.cat(out)


@torch.no_grad()
def encode_images(model: nn.Module, images: Tensor, device: torch.device, batch_size: int = 256,
                  precision: str = "fp32") -> Tensor:
    """uint8 (N, 3, S, S) -> L2-normalised embeddings (N, E), float32."""
    from ..data.augment import Normalize
    from ..runtime import autocast

    normalize = Normalize(*mean_std(model)).to(device)
    out = []
    for start in range(0, len(images), batch_size):
        with autocast(device, precision):
            emb = model.encode_image(normalize(images[start:start + batch_size].to(device)))
        out.append(nn.functional.normalize(emb.float(), dim=-1))
    return torch.cat(out)


def zero_shot_classifier(model: nn.Module, tok: Any, classes: Sequence[str], templates: Sequence[str],
                         device: torch.device | None = None) -> Tensor:
    """Prompt ensembling (CLIP §3.1.4): each class's embedding is the normalised mean of its normalised prompt
    embeddings, one prompt per template. -> (num_classes, E)."""
    _check_prompts(classes, templates)
    device = device or next(model.parameters()).device
    rows = []
    for name in classes:
        emb = encode_texts(model, tok, [t.format(name) for t in templates], device)     # (T, E)
        rows.append(nn.functional.normalize(emb.mean(0), dim=-1))
    return torch.stack(rows)


def _check_prompts(classes: Sequence[str], templates: Sequence[str]) -> None:
    if not classes:
        raise VitlabError("zero-shot needs at least one class name")
    if not templates:
        raise VitlabError("zero-shot needs at least one template")
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise VitlabError(f"a template must hold {{}} where the class name goes, got {bad[0]!r}")


@torch.no_grad()
def zero_shot_log_probs(model: nn.Module, tok: Any, image_embeds: Tensor, classes: Sequence[str],
                        templates: Sequence[str], ensemble: str = "mean",
                        device: torch.device | None = None) -> Tensor:
    """Class log-probabilities (N, C) of L2-normalised image embeddings (N, E), at the model's learned scale.

    "mean": log_softmax(scale * image @ zero_shot_classifier(...)^T). "prob": with s[n, c, t] = scale *
    cos(image n, prompt t of class c), log p(c | n) = logsumexp_t s[n, c, t] - logsumexp_{c', t} s[n, c', t].
    """
    if ensemble not in ENSEMBLES:
        raise VitlabError(f"ensemble must be one of {', '.join(ENSEMBLES)}, got {ensemble!r}")
    device = device or next(model.parameters()).device
    scale = float(model.scale())
    if ensemble == "mean":
        classifier = zero_shot_classifier(model, tok, classes, templates, device)              # (C, E)
        return (scale * image_embeds @ classifier.t().to(image_embeds)).log_softmax(-1)
    _check_prompts(classes, templates)
    prompts = [t.format(name) for name in classes for t in templates]
    text = encode_texts(model, tok, prompts, device).to(image_embeds)                          # (C * T, E)
    s = (scale * image_embeds @ text.t()).view(len(image_embeds), len(classes), len(templates))  # (N, C, T)
    per_class = s.logsumexp(-1)                                                                # (N, C)
    return per_class - per_class.logsumexp(-1, keepdim=True)


@torch.no_grad()
def zero_shot_predict(model: nn.Module, images: Tensor, classifier: Tensor, device: torch.device,
                      precision: str = "fp32") -> Tensor:
    """uint8 images (N, 3, S, S) -> predicted class indices (N,)."""
    return (encode_images(model, images, device, precision=precision) @ classifier.t()).argmax(-1).cpu()


@torch.no_grad()
def evaluate_pairs(model: nn.Module, dataset: Any, device: torch.device, precision: str = "fp32",
                   batch_size: int = 256) -> dict[str, Any]:
    """Retrieval both ways over the val pairs, zero-shot shape accuracy and compositional R@5 (scenes)."""
    from ..retrieval import bidirectional_metrics, retrieval_metrics, retrieval_ranks

    model = unwrap_clip(model)
    was_training = model.training
    model.eval()
    tok = getattr(model, "tokenizer", None) or dataset.tokenizer     # a loaded checkpoint reads with its own
    images = encode_images(model, dataset.images, device, batch_size, precision)         # (N, E)
    texts = encode_texts(model, tok, dataset.captions, device, batch_size)               # (N, E)
    sim = (images @ texts.t()).cpu()                                                      # (N, N) cosine
    captions = dataset.captions
    index = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    cid = torch.tensor([index[c] for c in captions])
    positives = cid[:, None] == cid[None, :]                                             # identical captions
    m = bidirectional_metrics(sim, positives, prefix="val_")
    result: dict[str, Any] = {**m, "val_median_rank": m["val_i2t_median_rank"], "val_mean_rank": m["val_i2t_mean_rank"]}
    if dataset.shapes and dataset.classes:
        single = [i for i, s in enumerate(dataset.shapes) if len(s) == 1]
        if single:
            ensemble = getattr(dataset, "ensemble", None) or default_ensemble(dataset.templates)
            pred = zero_shot_log_probs(model, tok, images[single], dataset.classes, dataset.templates, ensemble,
                                       device).argmax(-1).cpu()
            truth = torch.tensor([dataset.classes.index(dataset.shapes[i][0]) for i in single])
            result["val_zeroshot_top1"] = 100.0 * float((pred == truth).float().mean())
            result["val_zeroshot_images"] = len(single)
    if dataset.novel and any(dataset.novel):
        novel = torch.tensor(dataset.novel)
        ranks = retrieval_ranks(sim[novel], positives[novel])
        result["val_compositional_r5"] = retrieval_metrics(ranks, ks=(5,))["r5"]
        result["val_compositional_images"] = int(novel.sum())
        # chance: a random ranking puts one of p positives among the top 5 of N with prob 1 - C(N-p, 5) / C(N, 5)
        N = sim.shape[1]
        p = positives[novel].sum(1).double()
        miss = torch.ones_like(p)
        for j in range(5):
            miss *= (N - p - j).clamp(min=0) / (N - j)
        result["val_compositional_chance_r5"] = float((1 - miss).mean())
    result["similarity"] = sim[:16, :16]
    model.train(was_training)
    return result


def zero_shot_evaluate(checkpoint: str, data: str, *, classes: Sequence[str] | None = None,
                       templates: Sequence[str] | None = None, split: str = "val", device: str = "cpu",
                       precision: str = "fp32", seed: int = 0, ensemble: str | None = None) -> dict[str, Any]:
    """`vitlab zero-shot`: a CLIP checkpoint classifies a labelled data set (vitlab.data.build_data) from text
    prompts alone: top-1/top-5 (percent) over `classes` (default: the data's class names, in its label order),
    each class's templates combined by `ensemble` (default: the checkpoint's; see ENSEMBLES)."""
    from ..checkpoint import load_model
    from ..data import build_data
    from ..runtime import resolve_device

    dev = resolve_device(device)
    model = load_model(checkpoint).to(dev).eval()
    if not hasattr(model, "encode_text"):
        raise VitlabError(f"{checkpoint}: {getattr(model, 'vitlab_name', 'model')} is not a CLIP model "
                          "(zero-shot needs a text tower)")
    tok = clip_tokenizer(model)
    size = model.cfg.img_size
    bundle = build_data(data, size, seed=seed)
    names = list(classes) if classes else list(bundle.classes)
    if len(names) != len(bundle.classes):
        raise VitlabError(f"--classes names {len(names)} classes but {data} has {len(bundle.classes)} "
                          f"({', '.join(bundle.classes)})")
    templates = tuple(templates) if templates else tuple(getattr(model, "templates", GENERIC_TEMPLATES))
    dataset = bundle.val if split == "val" else bundle.train
    images = dataset.images if dataset.images is not None else torch.stack(
        [dataset.read_image(i) for i in range(len(dataset))])
    ensemble = ensemble or getattr(model, "ensemble", None) or default_ensemble(templates)
    logits = zero_shot_log_probs(model, tok, encode_images(model, images, dev, precision=precision), names,
                                 templates, ensemble, dev)                                      # (N, C)
    labels = dataset.labels
    top = logits.topk(min(5, len(names)), dim=-1).indices.cpu()
    top1 = 100.0 * float((top[:, 0] == labels).float().mean())
    top5 = 100.0 * float((top == labels[:, None]).any(-1).float().mean())
    unknown = [n for n in names if tok.unk_id in tok.encode(n, bos=False, eos=False)]   # read as <unk>
    return {"top1": top1, "top5": top5, "chance": 100.0 / len(names), "images": len(labels), "classes": names,
            "templates": list(templates), "ensemble": ensemble, "data": data, "split": split,
            **({"classes_not_in_vocabulary": unknown} if unknown else {})}


def plot_similarity(sim: Tensor, captions: Sequence[str], path: Path) -> Path:
    """The (images x captions) cosine similarity matrix of a few val pairs, the diagonal the true pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = sim.shape[0]
    fig, ax = plt.subplots(figsize=(9, 8))
    im = ax.imshow(sim.numpy(), cmap="viridis")
    ax.set_yticks(range(n), [f"image {i}" for i in range(n)], fontsize=7)
    ax.set_xticks(range(n), [c[:40] for c in captions[:n]], rotation=70, ha="right", fontsize=6)
    ax.set_title("Cosine similarity of val images (rows) and captions (columns); true pairs on the diagonal")
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def _checkpoint_extras(path: str) -> dict[str, Any]:
    from ..convert import read_checkpoint

    return dict(read_checkpoint(path).meta.get("task_extras") or {})


TASK = ContrastiveTask()
