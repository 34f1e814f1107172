"""Self-supervised learning with DINO: no labels in training; k-NN on frozen features to measure it.

Data: any labelled spec (vitlab.data.build_data; `scenes` = single-object scenes with masks). Training never reads
the labels: a batch is turned into 2 global + N local crops on the device (kornia; DINO's augmentations and scale
ranges), the objective is DINO's cross-entropy between the teacher's view of each global crop and the student's of
every other crop (vitlab.models.dino). After each optimizer step the teacher follows the student (EMA, cosine
momentum 0.996 -> 1). Evaluation per epoch: weighted k-NN top-1 of the teacher's [CLS] features (train split as
the memory bank, k = 20, T = 0.07) and the collapse guards: the entropy of the teacher's output distribution, its
KL divergence to the uniform one, and the share of images whose top prototype is the most common one.
Primary metric: `val_knn_top1` (percent).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import kornia.augmentation as K
import torch
from torch import Tensor, nn

from ..data import batches, build_data
from ..data.augment import Normalize
from ..errors import VitlabError
from .base import Task, mean_std, refuse_classification_options
from .classification import LabelledImageBatches

log = logging.getLogger(__name__)

ONE_PROTOTYPE_SHARE = 0.9     # collapsed: at least this share of the images has the same top prototype
UNIFORM_ENTROPY_SHARE = 0.95  # collapsed: mean entropy at least this share of log K (a uniform output)


class MultiCropAugment(nn.Module):
    """(uint8 images (B, 3, S, S), labels (B,)) -> (global crops (2B, 3, S, S), {"local": (nB, 3, L, L), "labels"})

    DINO's views (§ Appendix; the paper's scale ranges): random resized crops (global 0.4-1, local 0.05-0.4 of the
    area), flips, colour jitter (0.4, 0.4, 0.2, hue 0.1; p 0.8), grayscale (p 0.2), Gaussian blur (p 1.0 / 0.1 on
    the two global views, 0.5 on the local ones; sigma scaled to the image side) and solarisation (second global
    view, p 0.2). `jitter` (brightness, contrast, saturation), `hue`, `jitter_p` and `grayscale_p` override the
    paper's values. Views are stacked view-major: rows [v B, (v + 1) B) are view v.
    """

    def __init__(self, img_size: int, local_size: int, num_local: int, global_scale: tuple[float, float],
                 local_scale: tuple[float, float], mean: tuple[float, ...], std: tuple[float, ...],
                 hue: float = 0.1, grayscale_p: float = 0.2, jitter: tuple[float, float, float] = (0.4, 0.4, 0.2),
                 jitter_p: float = 0.8) -> None:
        super().__init__()
        from ..models.dino import check_colour_jitter

        check_colour_jitter(hue, grayscale_p, jitter, jitter_p)
        self.num_local = num_local
        sigma = (0.1, 2.0 * img_size / 224)                        # the paper's 0.1-2 px at 224 px

        def view(size: int, scale: tuple[float, float], blur: float, solarize: float = 0.0) -> nn.Sequential:
            ops = [K.RandomResizedCrop((size, size), scale=scale), K.RandomHorizontalFlip(),
                   K.ColorJitter(*jitter, hue, p=jitter_p), K.RandomGrayscale(p=grayscale_p)]
            if blur > 0:
                ops.append(K.RandomGaussianBlur((5, 5), sigma, p=blur))
            if solarize > 0:
                ops.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=solarize))
            return nn.Sequential(*ops)

        self.global1 = view(img_size, global_scale, blur=1.0)
        self.global2 = view(img_size, global_scale, blur=0.1, solarize=0.2)
        self.local = view(local_size, local_scale, blur=0.5)
        self.normalize = Normalize(mean, std)

    def forward(self, images: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        x = images.float() / 255.0
        g = torch.cat([self.global1(x), self.global2(x)]).clamp_(0.0, 1.0)               # (2B, 3, S, S)
        local = (self.local(x.repeat(self.num_local, 1, 1, 1)).clamp_(0.0, 1.0) if self.num_local
                 else x.new_zeros(0, *x.shape[1:]))                                        # (nB, 3, L, L)
        return self.normalize(g), {"local": self.normalize(local), "labels": labels}


class DINOObjective:
    """(DINO model, global crops, {"local"}) -> (loss, {}); after each optimizer step (`bind`) the teacher EMA.

    Reads the training clock from the model's `step` buffer, so a resumed run continues the schedules exactly:
    teacher temperature per epoch, last layer frozen in the first epoch(s), momentum and weight decay per step.
    The weight decay of the optimizer's decayed groups (those bound with a decay > 0; norms, biases and tokens stay
    at 0) follows a cosine from `weight_decay` (--weight-decay) to the model's cfg.weight_decay_end, set before
    each step from the step count alone."""

    def __init__(self, model: nn.Module, epochs: int, weight_decay: float = 0.04) -> None:
        self.model, self.epochs, self.weight_decay = model, epochs, weight_decay
        self.steps_per_epoch: int | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.decayed_groups: list[int] = []

    def bind(self, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> None:
        self.steps_per_epoch = steps_per_epoch
        self.optimizer = optimizer               # groups by index: a resume's load_state_dict replaces the dicts
        self.decayed_groups = [i for i, g in enumerate(optimizer.param_groups) if g["weight_decay"] > 0]
        optimizer.register_step_pre_hook(lambda _opt, _args, _kwargs: self.before_step())
        optimizer.register_step_post_hook(lambda _opt, _args, _kwargs: self.after_step())

    def before_step(self) -> None:
        from ..models.dino import weight_decay

        wd = weight_decay(int(self.model.step), self.total_steps, self.weight_decay, self.model.cfg.weight_decay_end)
        for i in self.decayed_groups:
            self.optimizer.param_groups[i]["weight_decay"] = wd

    @property
    def total_steps(self) -> int:
        return self.epochs * self._steps_per_epoch()

    def _steps_per_epoch(self) -> int:
        if self.steps_per_epoch is None:
            raise RuntimeError("DINOObjective.bind(optimizer, steps_per_epoch) was not called")
        return self.steps_per_epoch

    def after_step(self) -> None:
        from ..models.dino import teacher_momentum

        model = self.model
        m = teacher_momentum(int(model.step), self.total_steps, model.cfg.momentum_teacher)
        model.update_teacher(m)
        model.step += 1

    def __call__(self, net: nn.Module, x: Tensor, targets: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        from ..models.dino import dino_loss, teacher_temperature

        model, c = self.model, self.model.cfg
        epoch = int(model.step) // self._steps_per_epoch()
        temp = teacher_temperature(epoch, self.epochs, c.warmup_teacher_temp, c.teacher_temp,
                                   c.warmup_teacher_temp_fraction)
        model.teacher_temp.fill_(temp)
        out = net(x, targets["local"], freeze_last_layer=epoch < c.freeze_last_layer_epochs)
        loss = dino_loss(out["student"], out["teacher"], model.center, temp, c.student_temp, num_global=2)
        model.update_center(out["teacher"])           # after the loss, as the official DINOLoss
        return loss, {}


class SelfSupervisedTask(LabelledImageBatches, Task):
    name = "self_supervised"
    primary_metric = "val_knn_top1"
    epoch_metrics = ("val_knn_top1", "teacher_entropy", "teacher_kl_uniform", "top_prototype_share")

    def check_config(self, cfg: Any) -> None:
        refuse_classification_options(cfg, "self-supervised (DINO)", "DINO's multi-crop")
        if cfg.ema:
            raise VitlabError(f"--ema: {cfg.model} is a DINO model; its teacher is already the EMA of the student")
        if cfg.fsdp:
            raise VitlabError(f"--fsdp: not supported for {cfg.model} (the teacher EMA reads the full student)")

    def build_data(self, cfg: Any, image_size: int) -> Any:
        data = build_data(cfg.data, image_size, val_fraction=cfg.val_fraction, seed=cfg.seed)
        data.val.bank = data.train                # the k-NN memory bank (evaluate gets only the val split)
        return data

    def augment(self, cfg: Any, model: nn.Module, data: Any, image_size: int) -> nn.Module:
        c = model.cfg
        return MultiCropAugment(image_size, c.local_size, c.num_local_crops, c.global_crops_scale,
                                c.local_crops_scale, *mean_std(model), hue=c.hue_jitter,
                                grayscale_p=c.grayscale_p, jitter=c.colour_jitter, jitter_p=c.colour_jitter_p)

    def objective(self, cfg: Any, model: nn.Module, device: torch.device) -> Any:
        return DINOObjective(model, cfg.epochs, cfg.weight_decay)

    def bind_optimizer(self, objective: Any, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> None:
        objective.bind(optimizer, steps_per_epoch)

    def evaluate(self, model: nn.Module, dataset: Any, device: torch.device, precision: str = "fp32",
                 batch_size: int = 256, workers: int = 0) -> dict[str, Any]:
        return evaluate_dino(model, dataset, getattr(dataset, "bank", None), device, batch_size)

    def epoch_line(self, result: dict[str, Any]) -> str:
        knn = f"val k-NN top-1 {result['val_knn_top1']:.2f}%  " if "val_knn_top1" in result else ""
        line = (f"{knn}teacher entropy {result['teacher_entropy']:.3f} nats (uniform {result['max_entropy']:.2f})  "
                f"top prototype {100 * result['top_prototype_share']:.0f}% of images")
        return line + (f"  COLLAPSED ({result['collapse_kind']})" if result["collapsed"] else "")

    def final_metrics(self, result: dict[str, Any], data: Any) -> dict[str, Any]:
        keys = ("val_knn_top1", "teacher_entropy", "teacher_kl_uniform", "max_entropy", "top_prototype_share",
                "collapsed", "collapse_kind")
        metrics = {k: result[k] for k in keys if k in result}
        metrics["num_classes"] = len(data.classes)
        if result["collapsed"]:
            log.warning("the teacher's output collapsed (%s): %s", result["collapse_kind"], self.epoch_line(result))
        return metrics

    def report(self, out: Path, model: nn.Module, data: Any, result: dict[str, Any],
               history: list[dict[str, Any]]) -> list[Path]:
        from ..explain.cls_attention import plot_cls_attention

        n = min(4, len(data.val))
        idx = torch.linspace(0, len(data.val) - 1, n).round().long()
        images = torch.stack([data.val.read_image(int(i)) for i in idx])
        masks = data.val.masks[idx] if hasattr(data.val, "masks") else None
        return [plot_cls_attention([("DINO teacher", model)], images, out / "cls_attention.png", masks)]

    def explain(self, model: nn.Module, inputs: list[str], out: Path, *, data: str | None = None,
                samples: int = 4) -> dict[str, Any] | None:
        """The teacher's last-layer [CLS] attention per head and its 60%-mass masks (DINO Fig. 3), on image files
        and/or `samples` val images of `data` (default: the run's own data), with the object outlines when the
        data has masks (`scenes`)."""
        from ..data import load_image
        from ..explain.cls_attention import plot_cls_attention

        size = model.cfg.img_size
        images = [load_image(p, size) for p in inputs]
        data = data if data is not None or inputs else (getattr(model, "vitlab_meta", None) or {}).get("data")
        masks = None
        if data is not None:
            val = build_data(data, size).val
            idx = torch.linspace(0, len(val) - 1, min(samples, len(val))).round().long()
            images += [val.read_image(int(i)) for i in idx]
            if hasattr(val, "masks") and not inputs:
                masks = val.masks[idx]
        if not images:
            raise VitlabError("no images: give image files or --data SPEC")
        out.mkdir(parents=True, exist_ok=True)
        path = plot_cls_attention([(getattr(model, "vitlab_name", "DINO"), model)], torch.stack(images),
                                  out / "cls_attention.png", masks)
        (out / "index.html").write_text('<html><body><h1>DINO teacher: last-layer [CLS] attention per head, '
                                        '60%-mass masks</h1><img src="cls_attention.png"></body></html>\n')
        return {"files": [path.name], "report": str(out / "index.html"),
                "lines": [f"{len(images)} images: [CLS] attention of the teacher's last layer -> {path}"]}

    def predict(self, predictor: Any, paths: list[str], *, out: Path | None = None, top_k: int = 5,
                threshold: float = 0.5) -> list[str]:
        raise VitlabError("a self-supervised (DINO) model has no classes to predict; evaluate its features with "
                          "`vitlab eval --protocol knn|linear` or show its attention with `vitlab explain`")

    def summary(self, metrics: dict[str, Any]) -> str:
        knn = f"val k-NN top-1 {metrics['val_knn_top1']:.2f}%  " if "val_knn_top1" in metrics else ""
        collapse = f"COLLAPSED ({metrics['collapse_kind']})" if metrics["collapsed"] else "no collapse"
        return f"{knn}teacher entropy {metrics['teacher_entropy']:.3f} nats; {collapse}"


@torch.no_grad()
def teacher_statistics(probs: Tensor) -> dict[str, Any]:
    """Collapse guards from the teacher's output distributions (N, K): mean entropy (nats), mean KL to the
    uniform distribution (log K - entropy), the share of images whose top prototype is the most common one, and
    whether that is a collapse: onto one prototype, or to the uniform output."""
    K_ = probs.shape[1]
    entropy = float(-(probs * probs.clamp_min(1e-12).log()).sum(dim=1).mean())
    top = probs.argmax(dim=1)
    share = float(torch.bincount(top, minlength=K_).max()) / max(len(top), 1)
    max_entropy = math.log(K_)
    # a near-uniform output first: its top prototype is noise (ties all go to prototype 0)
    kind = ("uniform" if entropy >= UNIFORM_ENTROPY_SHARE * max_entropy else
            "one prototype" if share >= ONE_PROTOTYPE_SHARE else None)
    return {"teacher_entropy": entropy, "teacher_kl_uniform": max_entropy - entropy, "max_entropy": max_entropy,
            "top_prototype_share": share, "prototypes_used": int(top.unique().numel()), "collapsed": kind is not None,
            "collapse_kind": kind}


@torch.no_grad()
def evaluate_dino(model: nn.Module, val: Any, bank: Any | None, device: torch.device,
                  batch_size: int = 256) -> dict[str, Any]:
    """k-NN top-1 of the teacher's [CLS] features (when a labelled memory bank is given) and the collapse guards
    on the val images (the teacher's centred output at the current teacher temperature)."""
    from ..eval_protocols import extract_features, knn_top1

    model.eval()
    normalize = Normalize(*mean_std(model)).to(device)
    probs = []
    for images, _ in batches(val, batch_size, shuffle=False):
        probs.append(model.teacher_probs(normalize(images.to(device))).float().cpu())
    if not probs:
        raise VitlabError("the validation set is empty")
    result = teacher_statistics(torch.cat(probs))
    if bank is not None:
        val_f = extract_features(model, val, device, batch_size)
        bank_f = extract_features(model, bank, device, batch_size)
        result["val_knn_top1"] = knn_top1(bank_f, bank.labels, val_f, val.labels, len(val.classes))
    result["val_images"] = len(val)
    return result


TASK = SelfSupervisedTask()
