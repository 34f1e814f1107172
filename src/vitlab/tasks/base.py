"""The Task interface: the named parts a task supplies to training, evaluation, prediction and the report."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import VitlabError

Objective = Callable[[nn.Module, Tensor, Any], tuple[Tensor, dict[str, Tensor]]]


class Task:
    """One task of the seam. Subclasses fill in each step; the trainer sees only batches, a batch transform and
    an objective, run_training only these methods.

    A data bundle is whatever `build_data` returns with `.train`, `.val`, `.classes`, `.name` and `.skipped`.
    """

    name: str = ""
    primary_metric: str = ""                 # the metrics.json key a run is judged by (e.g. "val_top1")
    epoch_metrics: tuple[str, ...] = ()      # evaluate() keys logged per epoch in metrics.csv
    takes_images: bool = True                # False: text in (translation); no input size, no normalisation
    decodes_text: bool = False               # True: predict/evaluate take beam_size= and length_penalty=
    explains_texts: bool = False             # True: explain takes texts= (CLIP: the prompts of `explain --text`)

    def check_config(self, cfg: Any) -> None:
        """Refuse training options that make no sense for the task (one clear line)."""

    def build_data(self, cfg: Any, image_size: int) -> Any:
        raise NotImplementedError

    def model_args(self, data: Any) -> dict[str, Any]:
        """Constructor arguments the data decides (a CLIP model's vocabulary size and end-of-text id); the
        trainer builds the model with them, under the user's --model-arg. None by default."""
        return {}

    def num_train_batches(self, data: Any, batch_size: int, world_size: int = 1) -> int:
        raise NotImplementedError

    def train_batches(self, data: Any, batch_size: int, *, epoch: int, seed: int, rank: int = 0,
                      world_size: int = 1, workers: int = 0) -> Iterator[tuple[Tensor, Any]]:
        raise NotImplementedError

    def augment(self, cfg: Any, model: nn.Module, data: Any, image_size: int) -> nn.Module:
        """(uint8 images, targets) -> (normalised inputs, targets), on the training device."""
        raise NotImplementedError

    def objective(self, cfg: Any, model: nn.Module, device: torch.device) -> Objective:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, dataset: Any, device: torch.device, precision: str = "fp32",
                 batch_size: int = 256, workers: int = 0) -> dict[str, Any]:
        """Metrics of `model` on one split: floats under the task's metric names, plus figures' raw material."""
        raise NotImplementedError

    def epoch_line(self, result: dict[str, Any]) -> str:
        """The validation part of an epoch's log line."""
        return "  ".join(f"{k} {result[k]:.4g}" for k in self.epoch_metrics if k in result)

    def final_metrics(self, result: dict[str, Any], data: Any) -> dict[str, Any]:
        """What metrics.json says of the final evaluation (task keys; run_training adds the run's own)."""
        return {k: result[k] for k in self.epoch_metrics if k in result}

    def report(self, out: Path, model: nn.Module, data: Any, result: dict[str, Any],
               history: list[dict[str, Any]]) -> list[Path]:
        """The task's figures in the run directory (the curves are drawn by run_training for every task)."""
        return []

    def predict(self, predictor: Any, paths: list[str], *, out: Path | None = None, top_k: int = 5,
                threshold: float = 0.5) -> list[str]:
        """Run `predictor` (vitlab.predict.Predictor) on image files, write what the task writes under `out`,
        and return one line per image for the terminal."""
        raise NotImplementedError

    def checkpoint_extras(self, data: Any) -> dict[str, Any]:
        """What a checkpoint needs beyond the weights to run the model (JSON-able; e.g. {"tokenizer":
        tokenizer.to_dict()}). Stored in the run's config.json under "task_extras"; restore_extras reads it back."""
        return {}

    def restore_extras(self, model: nn.Module, extras: dict[str, Any]) -> None:
        """Attach what checkpoint_extras stored to a model loaded for eval/predict/explain/resume (e.g.
        model.tokenizer). Called by vitlab.checkpoint.load_model and by run_training."""

    def explain(self, model: nn.Module, inputs: list[str], out: Path, *, data: str | None = None,
                samples: int = 4) -> dict[str, Any] | None:
        """`vitlab explain` for a task with its own figures (e.g. translation's cross-attention alignment):
        write them under `out`, return the summary ({"files": [...], "report": path, "lines": [terminal lines]}).
        None: the image report of vitlab.explain (classification, detection)."""
        return None

    def bind_optimizer(self, objective: Any, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> None:
        """Called once the optimizer exists, for an objective that acts after each optimizer step or reads the
        training clock (DINO: the teacher EMA, the momentum and temperature schedules). Nothing by default."""

    def loss_note(self, cfg: Any, model: nn.Module, data: Any) -> str | None:
        """A line for the curves figure saying why the training loss is not comparable with the validation loss
        (regularisation that is on only in training), or None."""
        return None

    def summary(self, metrics: dict[str, Any]) -> str:
        """One line for the terminal at the end of `vitlab train`."""
        return f"{self.primary_metric} {metrics[self.primary_metric]:.4g}"


def refuse_classification_options(cfg: Any, kind: str, augmentation: str) -> None:
    """One line naming every classification-only training option that is on, for a `kind` model (detection,
    segmentation, ...) whose own augmentation is `augmentation`."""
    refused = [flag for flag, on in (("--mixup", cfg.mixup > 0), ("--cutmix", cfg.cutmix > 0),
                                     ("--randaugment", cfg.randaugment > 0), ("--erase", cfg.erase > 0),
                                     ("--teacher", bool(cfg.teacher))) if on]
    if refused:
        raise VitlabError(f"{', '.join(refused)}: classification-only; {cfg.model} is a {kind} model "
                          f"(its augmentation is {augmentation})")


def mean_std(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The input normalisation a model's weights expect (its cfg.mean / cfg.std)."""
    cfg = getattr(model, "cfg", None)
    if cfg is None or not hasattr(cfg, "mean"):
        raise VitlabError(f"{type(model).__name__} does not say its input normalisation (cfg.mean / cfg.std)")
    return tuple(cfg.mean), tuple(cfg.std)


# TrainConfig fields only some tasks read: field -> (default, the tasks that read it)
TASK_OPTIONS: dict[str, tuple[Any, tuple[str, ...]]] = {
    "ce_weight": (1.0, ("segmentation",)), "dice_weight": (1.0, ("segmentation",)),
}


def refuse_other_tasks_options(task: Task, cfg: Any) -> None:
    """One line naming every task-specific training option set away from its default for a task that ignores it
    (e.g. --dice-weight for a classifier), instead of training as if it had been honoured."""
    refused = [name for name, (default, owners) in TASK_OPTIONS.items()
               if task.name not in owners and getattr(cfg, name, default) != default]
    if refused:
        owners = sorted({o for name in refused for o in TASK_OPTIONS[name][1]})
        flags = ", ".join("--" + name.replace("_", "-") for name in refused)
        raise VitlabError(f"{flags}: {' and '.join(owners)}-only; {cfg.model} is a {task.name} model")


def decoding_options(task: Task, beam_size: int | None, length_penalty: float | None) -> dict[str, Any]:
    """`--beam-size` / `--length-penalty` of predict and eval as keyword arguments of task.predict / task.evaluate
    ({} when neither is given: the task's own decoding). Refused in one line for a task that decodes no text, a
    width below 1, or a length penalty with greedy decoding (beam 1), where it would change nothing."""
    given = {k: v for k, v in (("beam_size", beam_size), ("length_penalty", length_penalty)) if v is not None}
    if given and not task.decodes_text:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise VitlabError(f"{flags}: captioning and translation only (text decoding); this checkpoint is a "
                          f"{task.name} model")
    if beam_size is not None and beam_size < 1:
        raise VitlabError(f"--beam-size must be at least 1, got {beam_size}")
    if length_penalty is not None and beam_size == 1:
        raise VitlabError("--length-penalty: beam search only; --beam-size 1 is greedy decoding")
    return given
