"""Text-video retrieval (MMT, COLL max-pool): the bidirectional max-margin ranking loss over a batch of (clip,
caption) pairs; text->video and video->text retrieval metrics (vitlab.retrieval).

Data: vitlab.data.videos (`videos`, `videos:N` generated clips with their time-reversed twins, or a folder of
videos with an MSR-VTT captions JSON), T frames per clip as the model's `num_frames`. A batch is uint8 frames
(B, T, 3, S, S) with the captions' (ids (B, L), mask (B, L)); the tokenizer is a word-level vocabulary of the
training captions (or the --checkpoint's own), saved with every checkpoint (task_extras).

    vitlab train --model mmt_micro_32 --data videos --epochs 5

Metrics (metrics.json): val_t2v_r1/r5/r10, val_t2v_median_rank, val_t2v_mean_rank and the same for val_v2t_*
(R@k as fractions; identical captions count as matches of each other, as `vitlab study video-retrieval` counts
them); val_median_rank / val_mean_rank are text->video's (the direction the MMT paper's tables report);
val_twin_order_acc, on generated clips: the fraction of val captions whose own clip scores above its time-reversed
twin (ties count half, so an order-blind model scores exactly 0.5). Primary: val_t2v_r1.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import VitlabError
from .base import Task, mean_std, refuse_classification_options

log = logging.getLogger(__name__)

VIDEO_SPECS = "'videos', 'videos:N' or a folder of videos with an MSR-VTT captions JSON (DIR or DIR:captions.json)"
DIRECTIONS = ("t2v", "v2t")
RETRIEVAL_KEYS = tuple(f"val_{d}_{k}" for d in DIRECTIONS for k in ("r1", "r5", "r10", "median_rank", "mean_rank"))


@dataclass
class VideoTextData:
    """What build_data returns: the two VideoSets (vitlab.data.videos), the tokenizer and the training captions'
    ids, for run_training's bundle interface (.train, .val, .name, .classes, .skipped)."""
    train: Any                                   # VideoSet: frames (N, T, 3, S, S) uint8, captions
    val: Any
    name: str                                    # the data spec (videos:N keeps its N: explain rebuilds the same val)
    tokenizer: Any                               # vitlab.text.tokenizer.TextTokenizer
    train_ids: Tensor                            # (N, L) long, padded to the longest caption
    train_mask: Tensor                           # (N, L) bool, True = a token
    classes: list[str] = field(default_factory=list)   # retrieval has no classes

    @property
    def skipped(self) -> list[str]:
        return self.train.skipped + self.val.skipped


class VideoTextTask(Task):
    name = "video_text"
    primary_metric = "val_t2v_r1"
    epoch_metrics = ("val_t2v_r1", "val_t2v_r5", "val_t2v_r10", "val_v2t_r1", "val_v2t_r5", "val_median_rank",
                     "val_mean_rank", "val_twin_order_acc")

    def check_config(self, cfg: Any) -> None:
        refuse_classification_options(cfg, "text-video retrieval", "none: a flip or crop would falsify captions "
                                      "that say left/right")
        if cfg.batch_size < 2:
            raise VitlabError(f"--batch-size {cfg.batch_size}: the ranking loss compares each clip with the other "
                              "clips of its batch; give at least 2")

    # --- data ------------------------------------------------------------------------------------------------------
    def build_data(self, cfg: Any, image_size: int) -> VideoTextData:
        from ..data.videos import build_video_text_data
        from ..registry import default_config
        from ..text.tokenizer import TextTokenizer, build_word_level

        check_video_spec(cfg.data, cfg.model)
        extras = _checkpoint_extras(cfg.checkpoint) if cfg.checkpoint else {}
        model_cfg = default_config(cfg.model, **cfg.model_args)
        frames = int(extras.get("num_frames") or model_cfg.get("num_frames", 6))
        bundle = build_video_text_data(cfg.data, image_size, seed=cfg.seed, num_frames=frames,
                                       val_fraction=cfg.val_fraction)
        if "tokenizer" in extras:
            tok = TextTokenizer.from_dict(extras["tokenizer"])
        else:
            tok = build_word_level(bundle.train.captions, max_length=int(model_cfg.get("context_length", 24)))
        ids, mask = tok.encode_batch(bundle.train.captions, truncate=True)                 # (N, L) each
        return VideoTextData(bundle.train, bundle.val, str(cfg.data), tok, ids, mask)

    def model_args(self, data: VideoTextData) -> dict[str, Any]:
        """The model's vocabulary is the data's tokenizer's."""
        return {"vocab_size": data.tokenizer.vocab_size}

    def checkpoint_extras(self, data: VideoTextData) -> dict[str, Any]:
        return {"tokenizer": data.tokenizer.to_dict(), "num_frames": int(data.train.frames.shape[1])}

    def restore_extras(self, model: nn.Module, extras: dict[str, Any]) -> None:
        from ..text.tokenizer import TextTokenizer

        if extras.get("tokenizer"):
            model.tokenizer = TextTokenizer.from_dict(extras["tokenizer"])

    def num_train_batches(self, data: VideoTextData, batch_size: int, world_size: int = 1) -> int:
        return len(data.train) // (batch_size * world_size)

    def train_batches(self, data: VideoTextData, batch_size: int, *, epoch: int, seed: int, rank: int = 0,
                      world_size: int = 1, workers: int = 0) -> Iterator[tuple[Tensor, tuple[Tensor, Tensor]]]:
        """Whole batches only (a last batch of one clip has no negative to rank against)."""
        g = torch.Generator().manual_seed(seed * 100003 + epoch)
        order = torch.randperm(len(data.train), generator=g)
        step = batch_size * world_size
        for start in range(0, len(order) - step + 1, step):
            idx = order[start + rank * batch_size: start + (rank + 1) * batch_size]
            yield data.train.frames[idx], (data.train_ids[idx], data.train_mask[idx])

    def augment(self, cfg: Any, model: nn.Module, data: VideoTextData, image_size: int) -> nn.Module:
        return ClipTransform(*mean_std(model))

    def objective(self, cfg: Any, model: nn.Module, device: torch.device) -> "VideoTextObjective":
        return VideoTextObjective()

    # --- evaluation ------------------------------------------------------------------------------------------------
    def evaluate(self, model: nn.Module, dataset: Any, device: torch.device, precision: str = "fp32",
                 batch_size: int = 256, workers: int = 0) -> dict[str, Any]:
        return evaluate_clips(model, dataset, device, precision, batch_size=batch_size)

    def epoch_line(self, result: dict[str, Any]) -> str:
        twin = f"  twin order {result['val_twin_order_acc']:.3f}" if "val_twin_order_acc" in result else ""
        return (f"t2v R@1 {result['val_t2v_r1']:.3f} R@5 {result['val_t2v_r5']:.3f}  v2t R@1 "
                f"{result['val_v2t_r1']:.3f}  MdR {result['val_median_rank']:.1f} MnR {result['val_mean_rank']:.1f}"
                + twin)

    def final_metrics(self, result: dict[str, Any], data: Any) -> dict[str, Any]:
        return {k: v for k, v in result.items() if isinstance(v, (int, float))}

    def summary(self, metrics: dict[str, Any]) -> str:
        return self.epoch_line(metrics)

    def report(self, out: Path, model: nn.Module, data: VideoTextData, result: dict[str, Any],
               history: list[dict[str, Any]]) -> list[Path]:
        """similarity.png: the cosines of the first (up to 16) val clips and their captions."""
        from ..explain.video import plot_clip_similarity

        sim = result["similarity"]                                                   # (n, n)
        n = sim.shape[0]
        return [plot_clip_similarity(sim, data.val.captions[:n], out / "similarity.png",
                                     [f"val clip {i}" for i in range(n)])]

    def explain(self, model: nn.Module, inputs: list[str], out: Path, *, data: str | None = None,
                samples: int = 4) -> dict[str, Any]:
        """The [AGG] token's attention over frames (MMT), or the frames the max-pool reads (COLL, MMT max-pool),
        and the clips x captions cosines (vitlab.explain.video)."""
        from ..explain.video import explain_video_text

        return explain_video_text(model, inputs, out, data=data, samples=samples)

    def predict(self, predictor: Any, paths: list[str], *, out: Path | None = None, top_k: int = 5,
                threshold: float = 0.5) -> list[str]:
        raise VitlabError("a text-video retrieval model has no classes to predict; score it with `vitlab eval "
                          "--checkpoint RUN --data videos` or show where it looks with `vitlab explain`")


class ClipTransform(nn.Module):
    """(uint8 frames (B, T, 3, S, S), (ids, mask)) -> (normalised frames, (ids, mask)). No augmentation: a flip
    would turn "moves left" into a lie."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        from ..data.augment import Normalize

        self.normalize = Normalize(mean, std)          # (1, 3, 1, 1) buffers broadcast over (B, T, 3, S, S)

    def forward(self, frames: Tensor, text: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        return self.normalize(frames), text


class VideoTextObjective:
    """model(frames, ids, mask)["similarity"] (B, B) -> Gabeur et al.'s bidirectional max-margin ranking loss
    (vitlab.models.mmt.LOSSES["max_margin"], margin 0.05 on cosines), or "infonce". The study
    (vitlab.studies.video_retrieval) trains its rows with this objective. Parts: the loss under its name, and the
    mean cosine of the true pairs and of the others (their gap is what the ranking loss widens)."""

    def __init__(self, loss: str = "max_margin", margin: float = 0.05) -> None:
        from ..models.mmt import LOSSES

        if loss not in LOSSES:
            raise VitlabError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        self.loss, self.loss_fn = loss, LOSSES[loss]
        self.loss_args = {"margin": margin} if loss == "max_margin" else {}

    def __call__(self, model: nn.Module, frames: Tensor, text: tuple[Tensor, Tensor]) -> tuple[Tensor,
                                                                                                dict[str, Tensor]]:
        ids, mask = text
        sim = model(frames, ids, mask)["similarity"].float()                   # (B, B) cosines, pair i on the diagonal
        loss = self.loss_fn(sim, **self.loss_args)
        with torch.no_grad():
            B = sim.shape[0]
            off = ~torch.eye(B, dtype=torch.bool, device=sim.device)
            parts = {self.loss: loss.detach(), "pos_cosine": sim.diagonal().mean(), "neg_cosine": sim[off].mean()}
        return loss, parts


# --- library functions the CLI, the study and tests call -----------------------------------------------------------
def check_video_spec(spec: str, model: str | None) -> None:
    """Refuse, in one line, a data spec that cannot hold captioned videos (an image data set, a missing path)."""
    if spec == "videos" or spec.startswith("videos:"):
        return
    folder = spec if Path(spec).exists() else spec.partition(":")[0]
    if not Path(folder).expanduser().is_dir():
        raise VitlabError(f"{spec}: {model or 'this model'} is a text-video retrieval model; its data is "
                          f"{VIDEO_SPECS}")


def video_tokenizer(model: nn.Module) -> Any:
    """The tokenizer a video-text checkpoint was trained with (model.tokenizer, restored from its task_extras)."""
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise VitlabError(f"{getattr(model, 'vitlab_name', 'model')}: the checkpoint holds no tokenizer "
                          "(task_extras.tokenizer in config.json)")
    return tok


@torch.no_grad()
def similarity_matrix(model: nn.Module, frames: Tensor, ids: Tensor, mask: Tensor, *,
                      normalize: Callable[[Tensor], Tensor], device: torch.device | None = None,
                      precision: str = "fp32", batch_size: int = 128) -> Tensor:
    """uint8 frames (V, T, 3, S, S), ids and mask (N, L) -> (V, N) float32 cosines of every clip with every text
    (on the CPU). `normalize` maps uint8 frames (moved to `device`, default the CPU) to the model's input."""
    from ..runtime import autocast

    device = device or torch.device("cpu")
    F = nn.functional
    videos, texts = [], []
    for i in range(0, len(frames), batch_size):
        with autocast(device, precision):
            v = model.encode_video(normalize(frames[i:i + batch_size].to(device)))
        videos.append(F.normalize(v.float(), dim=-1))
    for i in range(0, len(ids), batch_size):
        with autocast(device, precision):
            t = model.encode_text(ids[i:i + batch_size].to(device), mask[i:i + batch_size].to(device))
        texts.append(F.normalize(t.float(), dim=-1))
    return (torch.cat(videos) @ torch.cat(texts).t()).cpu()


def same_captions(captions: Sequence[str]) -> Tensor:
    """(N, N) bool: clip i and caption j match when caption j is the very text of clip i's caption."""
    index = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    cid = torch.tensor([index[c] for c in captions])
    return cid[:, None] == cid[None, :]


def retrieval_scores(sim: Tensor, captions: Sequence[str], prefix: str = "val_") -> dict[str, float]:
    """sim (V, T) cosines of clip i with caption j (caption j is clip j's) -> `<prefix>t2v_*` (each caption ranks
    the clips) and `<prefix>v2t_*` (each clip ranks the captions): r1, r5, r10 (fractions), median_rank,
    mean_rank (vitlab.retrieval); identical captions are matches of each other."""
    from ..retrieval import retrieval_metrics, retrieval_ranks

    positives = same_captions(captions)                                                 # (V, T), symmetric
    return {**retrieval_metrics(retrieval_ranks(sim.t(), positives.t()), f"{prefix}t2v_"),
            **retrieval_metrics(retrieval_ranks(sim, positives), f"{prefix}v2t_")}


def twin_order_accuracy(sim: Tensor, twin: Sequence[int]) -> float | None:
    """The fraction of captions j whose own clip j scores above its time-reversed twin's clip (sim (V, T));
    a tie counts half. None when no clip has a twin (real videos)."""
    pairs = [(j, k) for j, k in enumerate(twin) if k >= 0]
    if not pairs:
        return None
    own = torch.stack([sim[j, j] for j, _ in pairs])
    other = torch.stack([sim[k, j] for j, k in pairs])
    return float(((own > other).double() + 0.5 * (own == other).double()).mean())


@torch.no_grad()
def evaluate_clips(model: nn.Module, dataset: Any, device: torch.device, precision: str = "fp32",
                   batch_size: int = 256) -> dict[str, Any]:
    """Retrieval both ways over the val clips (a VideoSet), read with the model's own tokenizer; the twin order
    accuracy on generated clips; "similarity": the first 16 x 16 cosines for the report."""
    from ..data.augment import Normalize

    model = getattr(model, "module", model)                     # DDP
    was_training = model.training
    model.eval()
    tok = video_tokenizer(model)
    ids, mask = tok.encode_batch(dataset.captions, truncate=True)                          # (N, L)
    normalize = Normalize(*mean_std(model)).to(device)
    sim = similarity_matrix(model, dataset.frames, ids, mask, normalize=normalize, device=device,
                            precision=precision, batch_size=batch_size)                    # (N, N)
    result: dict[str, Any] = retrieval_scores(sim, dataset.captions)
    result["val_median_rank"] = result["val_t2v_median_rank"]
    result["val_mean_rank"] = result["val_t2v_mean_rank"]
    twin = twin_order_accuracy(sim, dataset.twin)
    if twin is not None:
        result["val_twin_order_acc"] = twin
    result["similarity"] = sim[:16, :16]
    model.train(was_training)
    return result


def _checkpoint_extras(path: str) -> dict[str, Any]:
    from ..convert import read_checkpoint

    return dict(read_checkpoint(path).meta.get("task_extras") or {})


TASK = VideoTextTask()
