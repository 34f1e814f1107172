"""run_training: data + model + objective + optimizer -> a run directory.

A run directory holds config.json (model name, arguments, classes, normalisation, the training config),
model.safetensors (the weights evaluation uses: the EMA when on), train_state.pt (everything needed to resume
bit for bit), metrics.csv (per epoch), metrics.json (final) and the report's pictures.
"""
from __future__ import annotations

import csv
import io
import logging
import random
import statistics
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import CONFIG_NAME, WEIGHTS_NAME, load_weights, model_config, read_config, read_weights, \
    save_weights
from .. import cpu_policy
from ..checks import check_choice, check_device, check_float, check_int, check_text
from ..errors import VitlabError
from ..io import write_json, write_text
from ..registry import create_model, default_config
from .distributed import DistInfo, barrier, full_optimizer_state, full_state_dict, init_distributed, per_rank_batch, \
    process_device, unwrap, wrap_model
from ..runtime import resolve_device, resolve_precision
from ..tasks import Task, task_for_model
from ..tasks.base import refuse_other_tasks_options
from .ema import ModelEMA
from .optim import build_optimizer, warmup_cosine, warmup_rsqrt
from .report import plot_curves
from .state import STATE_NAME, load_state, rng_state, save_state, set_rng_state
from .trainer import Progress, Trainer

log = logging.getLogger(__name__)

DEFAULT_MODEL = "vit_micro_patch2_8"


@dataclass
class TrainConfig:
    model: str | None = None            # registered model name; None: the checkpoint's, else DEFAULT_MODEL
    data: str = "digits"                # data spec: digits, shapes, or a path (ImageFolder, CIFAR, MNIST idx)
    out: str = "runs/train"             # run directory
    epochs: int = 100                   # epochs the schedule spans
    stop_at: int | None = None          # stop after this epoch (resume later with --resume); None = epochs
    # a time budget in seconds of training (the training loop, as metrics.csv's epoch_time_s: no evaluation or
    # setup): the run stops at the first optimizer step past it, then evaluates and saves as after an epoch. The
    # schedule still spans `epochs`; a resumed run continues at the next epoch. None = no limit
    time_limit_s: float | None = None
    batch_size: int = 32
    lr: float = 2e-3                    # peak learning rate (AdamW)
    weight_decay: float = 0.05          # AdamW decay on weights (not norms, biases, tokens, position embeddings)
    warmup_epochs: float = 5.0          # linear warm-up, then cosine decay to min_lr_ratio * lr
    min_lr_ratio: float = 0.01
    schedule: str = "cosine"            # cosine: warm-up + cosine; noam: warm-up + 1/sqrt(step) (Vaswani et al.)
    clip_grad: float = 1.0              # max gradient norm; 0 = off
    grad_accum: int = 1                 # batches per optimizer step
    label_smoothing: float = 0.1
    img_size: int | None = None         # input side; None = the model's
    drop_path: float | None = 0.1       # stochastic depth rate, for models that have it; None = the model's default
    model_args: dict[str, Any] = field(default_factory=dict)   # other constructor overrides (e.g. attention)
    checkpoint: str | None = None       # initial weights (fine-tuning): a run directory or a foreign checkpoint
    hflip: bool | None = None           # None: on, except for digit data (a mirrored 2 is not a 2)
    crop_scale: float = 0.8             # random resized crop lower area bound; >= 1 turns it off
    randaugment: int = 0                # RandAugment ops per image (0 = off)
    mixup: float = 0.0                  # Mixup alpha (0 = off)
    cutmix: float = 0.0                 # CutMix alpha (0 = off)
    erase: float = 0.0                  # random erasing probability
    ema: float = 0.0                    # EMA decay (e.g. 0.999); 0 = off
    precision: str = "auto"             # fp32 | bf16 | auto (bf16 on CUDA, fp32 on CPU)
    device: str = "auto"                # cpu | cuda | auto
    seed: int = 0
    val_fraction: float = 0.25          # held-out fraction for folders without val/
    workers: int = 0                    # decoding processes for folders too large to cache
    teacher: str | None = None          # DeiT distillation: teacher run directory or checkpoint
    distill: str = "hard"               # hard | soft
    distill_tau: float | None = None    # soft distillation temperature (default 3, as DeiT)
    distill_alpha: float | None = None  # weight of the distillation loss (default 0.5 hard, 0.1 soft)
    fsdp: bool = False                  # under torchrun: shard each block with FSDP2 instead of DDP replicas
    grad_checkpointing: bool = False    # recompute block activations in backward: less memory, ~1/3 more compute
    compile: bool = False               # torch.compile the model (measured in README "Performance")
    channels_last: bool = False         # NHWC images and conv weights (pays off where convolutions dominate)
    tensorboard: bool = False           # also write TensorBoard events into the run dir (pip install tensorboard)
    report: bool = True                 # the closing pictures (curves, confusion, rollout); smoke tests skip them
    ce_weight: float = 1.0              # segmentation loss: ce_weight * cross-entropy + dice_weight * soft Dice
    dice_weight: float = 1.0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def validate(self) -> "TrainConfig":
        """Refuse, in one line naming the option, any value out of range, not finite, of the wrong type or not
        one of the choices; nothing is loaded or built. Returns self. run_training calls it first, the CLI
        before anything else."""
        for name, rule in _RULES.items():
            value = getattr(self, name)
            if value is None and name in _OPTIONAL:
                continue
            kind, bounds = rule
            flag = "--" + name.replace("_", "-")
            if kind == "int":
                check_int(flag, value, **bounds)
            elif kind == "float":
                check_float(flag, value, **bounds)
            elif kind == "choice":
                check_choice(flag, value, bounds["choices"])
            elif kind == "device":
                check_device(flag, value)
            elif kind == "text":
                check_text(flag, value)
            elif kind == "bool" and not isinstance(value, bool):
                raise VitlabError(f"{flag} must be true or false, got {value!r}")
        if not isinstance(self.model_args, dict):
            raise VitlabError(f"model_args must be a dict of constructor arguments, got {self.model_args!r}")
        return self


# (kind, bounds) per TrainConfig field: what TrainConfig.validate accepts
_RULES: dict[str, tuple[str, dict[str, Any]]] = {
    "model": ("text", {}), "data": ("text", {}), "out": ("text", {}),
    "epochs": ("int", {"at_least": 1}), "stop_at": ("int", {"at_least": 1}),
    "time_limit_s": ("float", {"above": 0.0}),
    "batch_size": ("int", {"at_least": 1}), "lr": ("float", {"above": 0.0}),
    "weight_decay": ("float", {"at_least": 0.0}), "warmup_epochs": ("float", {"at_least": 0.0}),
    "min_lr_ratio": ("float", {"at_least": 0.0, "at_most": 1.0}),
    "schedule": ("choice", {"choices": ("cosine", "noam")}), "clip_grad": ("float", {"at_least": 0.0}),
    "grad_accum": ("int", {"at_least": 1}), "label_smoothing": ("float", {"at_least": 0.0, "below": 1.0}),
    "img_size": ("int", {"at_least": 1}), "drop_path": ("float", {"at_least": 0.0, "below": 1.0}),
    "checkpoint": ("text", {}), "hflip": ("bool", {}), "crop_scale": ("float", {"above": 0.0}),
    "randaugment": ("int", {"at_least": 0}), "mixup": ("float", {"at_least": 0.0}),
    "cutmix": ("float", {"at_least": 0.0}), "erase": ("float", {"at_least": 0.0, "at_most": 1.0}),
    "ema": ("float", {"at_least": 0.0, "below": 1.0}),
    "precision": ("choice", {"choices": ("fp32", "bf16", "fp16", "auto")}),
    "device": ("device", {}), "seed": ("int", {"at_least": 0}),
    "val_fraction": ("float", {"above": 0.0, "below": 1.0}), "workers": ("int", {"at_least": 0}),
    "teacher": ("text", {}), "distill": ("choice", {"choices": ("hard", "soft")}),
    "distill_tau": ("float", {"above": 0.0}), "distill_alpha": ("float", {"at_least": 0.0, "at_most": 1.0}),
    "fsdp": ("bool", {}), "grad_checkpointing": ("bool", {}), "compile": ("bool", {}), "channels_last": ("bool", {}),
    "tensorboard": ("bool", {}), "ce_weight": ("float", {"at_least": 0.0}), "dice_weight": ("float", {"at_least": 0.0}),
}
_OPTIONAL = {"model", "stop_at", "time_limit_s", "img_size", "drop_path", "checkpoint", "hflip", "teacher",
             "distill_tau", "distill_alpha"}
MAX_WARMUP_FRACTION = 0.2   # warm-up takes at most this share of the run: a 5-epoch run is not all warm-up


def prepare_run_dir(cfg: TrainConfig, *, resume: bool, overwrite: bool) -> Path:
    out = Path(cfg.out)
    taken = [p for p in (WEIGHTS_NAME, STATE_NAME) if (out / p).exists()]
    if taken and not resume:
        if not overwrite:
            raise VitlabError(f"{out} already holds a run; pass --resume {out} to continue it or --overwrite")
        for name in (WEIGHTS_NAME, STATE_NAME, CONFIG_NAME, "metrics.csv", "metrics.json"):
            (out / name).unlink(missing_ok=True)
    if out.exists() and not out.is_dir():
        raise VitlabError(f"{out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    return out


def load_run_config(run_dir: str | Path, **overrides: Any) -> TrainConfig:
    """The TrainConfig a run was started with, with `overrides` (e.g. epochs) applied, for --resume."""
    cfg = read_config(run_dir)
    if "train" not in cfg:
        raise VitlabError(f"{run_dir}: not a training run (config.json has no training section)")
    return TrainConfig.from_dict({**cfg["train"], **{k: v for k, v in overrides.items() if v is not None},
                                  "out": str(run_dir)})


def resolve_model_name(cfg: TrainConfig) -> TrainConfig:
    """cfg with `model` filled in: the one given, else the checkpoint's architecture (fine-tuning), else the
    main job's model."""
    if cfg.model:
        return cfg
    name = DEFAULT_MODEL
    if cfg.checkpoint:
        from ..convert import read_checkpoint

        name = read_checkpoint(cfg.checkpoint).model
    return replace(cfg, model=name)


def model_image_size(cfg: TrainConfig) -> int:
    """The input side the data is prepared at: --img-size, else the checkpoint's, else the variant's. Builds the
    variant's config on the meta device (no memory), so an argument it does not take or an input size its patches
    do not divide is refused here, before any data is read."""
    if cfg.checkpoint:
        if cfg.img_size:
            return cfg.img_size
        from ..convert import read_checkpoint

        size = read_checkpoint(cfg.checkpoint).model_args.get("img_size")
    else:
        given = {"img_size": cfg.img_size} if cfg.img_size else {}
        size = default_config(cfg.model, **cfg.model_args, **given).get("img_size")
        size = cfg.img_size or size
    if size is None:
        raise VitlabError(f"{cfg.model} has no default input size; pass --img-size")
    return size if isinstance(size, int) else size[0]


def log_input_size(data: Any, image_size: int) -> None:
    """Say once how the images were resized for the model (the data's own size, when it has one)."""
    source = getattr(data, "source_size", None)
    if source and source != f"{image_size}x{image_size}":
        log.info("%s: images %s, resized to the model's %dx%d", data.name, source, image_size, image_size)
    elif source:
        log.info("%s: images %s, the model's input size", data.name, source)


def build_model(cfg: TrainConfig, num_classes: int, image_size: int,
                data_args: dict[str, Any] | None = None) -> torch.nn.Module:
    """The model to train: fresh, or the --checkpoint's weights adapted to num_classes and image_size.
    data_args: constructor arguments the data decides (Task.model_args), under the user's --model-arg."""
    args = {**(data_args or {}), **cfg.model_args}
    if cfg.drop_path is not None and "drop_path_rate" in default_config(cfg.model, **args):
        args["drop_path_rate"] = cfg.drop_path
    if cfg.checkpoint:
        from ..checkpoint import load_model

        return load_model(cfg.checkpoint, name=cfg.model, num_classes=num_classes, img_size=image_size, **args)
    if cfg.img_size:
        args["img_size"] = cfg.img_size
    try:
        return create_model(cfg.model, **{**args, "num_classes": num_classes})
    except TypeError as e:   # an override the model does not take
        raise VitlabError(f"{cfg.model}: {e}") from None


def prepare_model(model: torch.nn.Module, cfg: TrainConfig, dist_info: DistInfo) -> torch.nn.Module:
    """Apply the speed/memory options that do not change the numerics: channels-last, activation checkpointing."""
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.grad_checkpointing:
        if not hasattr(model, "grad_checkpointing"):
            raise VitlabError(f"{cfg.model}: --grad-checkpointing is not supported by {type(model).__name__}")
        model.grad_checkpointing = True
    if cfg.fsdp and cfg.ema:
        raise VitlabError("--ema with --fsdp is not supported (the EMA would need the full weights on every rank)")
    if cfg.fsdp and not dist_info.enabled:
        raise VitlabError("--fsdp needs several processes: start with torchrun --nproc_per_node=N -m vitlab train")
    return model


@dataclass
class Processes:
    """Where this process trains: its device, precision and place among the ranks."""
    device: torch.device
    precision: str
    dist: DistInfo
    local_batch: int


def start_processes(cfg: TrainConfig) -> Processes:
    """Seed, pick the device and precision, and join the other ranks when started by torchrun."""
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    dist_info = init_distributed(device)          # a single process unless started by torchrun
    device = process_device(device, dist_info)
    if not dist_info.is_main:                     # rank 0 speaks for the job
        logging.getLogger("vitlab").setLevel(logging.WARNING)
    return Processes(device, precision, dist_info, per_rank_batch(cfg.batch_size, dist_info))


def build_trainer(cfg: TrainConfig, task: Task, model: torch.nn.Module, data: Any, image_size: int,
                  procs: Processes) -> tuple[Trainer, int]:
    """Objective, augmentation, optimizer, schedule, EMA and the (DDP/FSDP-wrapped) model in one Trainer.
    Returns it with the number of training batches per epoch and rank."""
    objective = task.objective(cfg, model, procs.device)
    augment = task.augment(cfg, model, data, image_size).to(procs.device)
    train_batches = task.num_train_batches(data, procs.local_batch, procs.dist.world_size)
    steps_per_epoch = -(-train_batches // cfg.grad_accum)
    if steps_per_epoch == 0:
        raise VitlabError(f"{cfg.data}: {len(data.train)} training images is fewer than one batch "
                          f"of {cfg.batch_size}; lower --batch-size")
    ema = ModelEMA(model, cfg.ema) if cfg.ema > 0 else None
    net = wrap_model(model, procs.dist, procs.device, fsdp=cfg.fsdp)   # DDP wrapper, or model (sharded in place)
    if cfg.compile:
        net.compile()
    # fused AdamW: one kernel per step (3.6x faster than foreach for ViT-Ti on a CPU), and on CUDA it lets the
    # trainer skip a non-finite step without a host sync; CPU kernels exist from torch 2.4
    fused = procs.device.type == "cuda" or tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 4)
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, fused=fused)
    if cfg.schedule == "noam":            # the 2017 Transformer's: peak --lr at the end of the warm-up
        scheduler = warmup_rsqrt(optimizer, warmup_steps(cfg, steps_per_epoch))
    else:
        scheduler = warmup_cosine(optimizer, warmup_steps(cfg, steps_per_epoch), cfg.epochs * steps_per_epoch,
                                  cfg.min_lr_ratio)
    task.bind_optimizer(objective, optimizer, steps_per_epoch)   # objectives that act after each step (DINO)
    trainer = Trainer(net, objective, optimizer, scheduler, batch_transform=augment, device=procs.device,
                      precision=procs.precision, clip_grad=cfg.clip_grad, ema=ema, grad_accum=cfg.grad_accum,
                      memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format,
                      time_limit_s=cfg.time_limit_s)
    return trainer, train_batches


def warmup_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """--warmup-epochs in optimizer steps, capped at MAX_WARMUP_FRACTION of the run (logged when capped): the
    default 5 epochs of warm-up would make a 5-epoch run all warm-up, ending at chance."""
    cap = MAX_WARMUP_FRACTION * cfg.epochs
    if cfg.warmup_epochs > cap:
        log.info("warm-up capped at %.3g epochs (%d%% of %d; --warmup-epochs %g)", cap,
                 round(MAX_WARMUP_FRACTION * 100), cfg.epochs, cfg.warmup_epochs)
    return int(min(cfg.warmup_epochs, cap) * steps_per_epoch)


def run_training(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False,
                 progress: Progress | None = None) -> dict[str, Any]:
    """Train and evaluate; returns the final metrics (also written to metrics.json in the run directory).
    The model's registered task (vitlab.tasks) supplies the data, augmentation, objective and evaluation."""
    t_start = time.perf_counter()
    cfg = resolve_model_name(cfg.validate())
    task = task_for_model(cfg.model)
    task.check_config(cfg)
    refuse_other_tasks_options(task, cfg)
    if cfg.tensorboard:
        from .tensorboard import require_tensorboard

        require_tensorboard()              # the optional extra: refused in one line before any data loads
    if task.takes_images:
        image_size: int | None = model_image_size(cfg)   # the model's config on the meta device: bad args refused
    else:                                  # text in (translation): no input size; bad arguments refused all the same
        image_size = None
        default_config(cfg.model, **cfg.model_args)
    out = prepare_run_dir(cfg, resume=resume, overwrite=overwrite)
    procs = start_processes(cfg)
    progress = progress if procs.dist.is_main else None

    data = task.build_data(cfg, image_size)
    log_input_size(data, image_size)
    model = build_model(cfg, len(data.classes), image_size, task.model_args(data))
    model = prepare_model(model.to(procs.device), cfg, procs.dist)
    if procs.dist.rank:   # the same initial weights everywhere, then each rank its own augmentation/drop-path draws
        torch.manual_seed(cfg.seed + procs.dist.rank)
    extras = task.checkpoint_extras(data)  # e.g. the tokenizer: what the model needs beyond its weights
    task.restore_extras(model, extras)
    trainer, train_batches = build_trainer(cfg, task, model, data, image_size, procs)
    run_config = model_config(model, data.classes, image_size=image_size, data=data.name, train=asdict(cfg),
                              **({"task_extras": extras} if extras else {}))

    start_epoch, history = (0, [])
    if resume:
        if cfg.fsdp:
            raise VitlabError("--resume of an --fsdp run is not supported yet (the sharded optimizer state "
                              "would have to be scattered back)")
        start_epoch, history = restore(out, trainer)
        check_task_extras(out, extras)
    tb = None
    if cfg.tensorboard and procs.dist.is_main:
        from .tensorboard import TensorBoardLog

        tb = TensorBoardLog(out, trainer.step, resume=resume)
        trainer.on_step = tb.step
    last_epoch = min(cfg.stop_at or cfg.epochs, cfg.epochs)
    if start_epoch >= last_epoch:
        raise VitlabError(f"{out}: nothing to train (already at epoch {start_epoch} of {cfg.epochs}); "
                          "pass a larger --epochs to continue")
    trainer.train_time_s = sum(h["epoch_time_s"] for h in history)     # a resumed run's time so far counts
    if cfg.time_limit_s is not None and trainer.train_time_s >= cfg.time_limit_s:
        raise VitlabError(f"{out}: nothing to train (already {trainer.train_time_s:.1f} s of training, "
                          f"--time-limit-s {cfg.time_limit_s:g}); pass a larger --time-limit-s to continue")
    params = sum(p.numel() for p in model.parameters())
    log.info("%s (%s): %.2fM parameters, %d classes, %d train / %d val %s%s, %s %s", cfg.model,
             task.name, params / 1e6, len(data.classes), len(data.train), len(data.val),
             "images" if task.takes_images else "examples", f" at {image_size}px" if image_size else "",
             procs.device, procs.precision)
    cpu_policy.announce()        # once: why fewer torch threads than cores, if so

    result: dict[str, Any] = {}
    for epoch in range(start_epoch + 1, last_epoch + 1):
        loader = task.train_batches(data, procs.local_batch, epoch=epoch, seed=cfg.seed, rank=procs.dist.rank,
                                    world_size=procs.dist.world_size, workers=cfg.workers)
        stats = trainer.train_epoch(loader, epoch, total=train_batches, progress=progress)
        stats["images_per_s"] *= procs.dist.world_size       # every rank ran as many images in the same time
        eval_model = evaluation_model(trainer, model, cfg)
        result = task.evaluate(eval_model, data.val, procs.device, procs.precision, workers=cfg.workers)
        timing = {k: stats.pop(k) for k in ("lr", "images_per_s", "epoch_time_s")}
        history.append({"epoch": epoch, "step": trainer.step, **stats,      # train_loss and its named parts
                        **{k: result[k] for k in task.epoch_metrics if k in result}, **timing})
        log.info("epoch %d/%d  loss %.4f  %s  %.0f img/s", epoch, cfg.epochs, stats["train_loss"],
                 task.epoch_line(result), timing["images_per_s"])
        save_checkpoint(out, trainer, eval_model, run_config, epoch, history, main=procs.dist.is_main)
        if procs.dist.is_main:
            write_text(out / "metrics.csv", _csv(history))
        if tb is not None:
            tb.epoch(history[-1])
        if trainer.out_of_time:
            log.info("time limit: %.1f s of training (--time-limit-s %g) reached at step %d, in epoch %d of %d; "
                     "stopped", trainer.train_time_s, cfg.time_limit_s, trainer.step, epoch, cfg.epochs)
            break

    metrics = {
        "model": cfg.model, "task": task.name, "data": data.name, "epochs": history[-1]["epoch"],
        **task.final_metrics(result, data), "primary_metric": task.primary_metric,
        "params": params, "train_images_per_s": statistics.median(h["images_per_s"] for h in history),
        "skipped_images": len(data.skipped), "skipped_files": data.skipped[:100],
        "train_images": len(data.train), "val_images": len(data.val), "image_size": image_size,
        "device": str(procs.device), "precision": procs.precision, "wall_time_s": time.perf_counter() - t_start,
    }
    if cfg.time_limit_s is not None:   # what the budget bought: the loop's seconds (epoch_time_s summed), steps
        metrics.update(time_limit_s=cfg.time_limit_s, train_time_s=trainer.train_time_s, steps=trainer.step,
                       stopped_at_time_limit=trainer.out_of_time)
    if procs.dist.is_main:
        write_json(out / "metrics.json", metrics)
        figures = (write_report(out, task, trainer, model, cfg, data, result, history, procs.device)
                   if cfg.report else [])
        if tb is not None:
            tb.figures(figures, trainer.step)
            tb.close()
    log.info("%s on %s after %d epochs: %s", cfg.model, data.name, metrics["epochs"], task.summary(metrics))
    return metrics


def check_task_extras(out: Path, extras: dict[str, Any]) -> None:
    """--resume: the rebuilt data must give what the run stored beside its weights (e.g. the same vocabulary)."""
    import json

    saved = read_config(out).get("task_extras") or {}
    if json.loads(json.dumps(extras)) != saved:
        raise VitlabError(f"{out}: the data now gives other task extras ({', '.join(sorted(extras)) or 'none'}; "
                          "e.g. another vocabulary) than the run was trained with; cannot resume")


def evaluation_model(trainer: Trainer, model: torch.nn.Module, cfg: TrainConfig) -> torch.nn.Module:
    """What is evaluated and saved: the EMA when on, the sharded module under FSDP (every rank runs it), else
    the plain model."""
    if trainer.ema is not None:
        return trainer.ema.module
    return trainer.model if cfg.fsdp else model


def write_report(out: Path, task: Task, trainer: Trainer, model: torch.nn.Module, cfg: TrainConfig, data: Any,
                 result: dict[str, Any], history: list[dict[str, Any]], device: torch.device) -> list[Path]:
    """The curves (every named loss part, the task's metrics) and the task's own figures (rank 0); returns
    the files written."""
    curves = plot_curves(history, out / "curves.png", metrics=task.epoch_metrics, primary=task.primary_metric,
                note=task.loss_note(cfg, model, data))
    if cfg.fsdp:   # the sharded model runs only with every rank; rank 0 reads back the full saved weights
        from ..checkpoint import load_model

        model = load_model(out).to(device)
    return [curves, *task.report(out, trainer.ema.module if trainer.ema is not None else model, data, result,
                                 history)]


def save_checkpoint(out: Path, trainer: Trainer, eval_model: torch.nn.Module, run_config: dict[str, Any],
                    epoch: int, history: list[dict[str, Any]], main: bool = True) -> None:
    """Write train_state.pt, then model.safetensors, then config.json, each atomically; both weights files
    carry the step so a resume can check they belong together. Under torchrun every rank calls this (FSDP
    gathers the shards collectively) and rank 0 (`main`) writes."""
    optimizer_state = full_optimizer_state(trainer.model, trainer.optimizer)
    weights = full_state_dict(eval_model) if trainer.ema is None else trainer.ema.state_dict()
    if not main:
        barrier()
        return
    state = {"epoch": epoch, "step": trainer.step, "optimizer": optimizer_state,
             "scheduler": trainer.scheduler.state_dict(), "rng": rng_state(), "history": history}
    if trainer.ema is not None:
        state["model"] = unwrap(trainer.model).state_dict()     # raw weights; model.safetensors holds the EMA
    save_state(out / STATE_NAME, state)
    save_weights(weights, out / WEIGHTS_NAME,
                 metadata={"epoch": str(epoch), "step": str(trainer.step)})
    from ..io import write_json as _write

    _write(out / CONFIG_NAME, run_config)
    barrier()                                            # the other ranks wait until the files are complete


def restore(out: Path, trainer: Trainer) -> tuple[int, list[dict[str, Any]]]:
    """Load a run's state into the trainer. Returns (epoch done, history)."""
    from safetensors import safe_open

    state = load_state(out / STATE_NAME)
    with safe_open(str(out / WEIGHTS_NAME), "pt") as f:
        step = int((f.metadata() or {}).get("step", -1))
    if step != state["step"]:
        raise VitlabError(f"{out}: model.safetensors (step {step}) and {STATE_NAME} (step {state['step']}) "
                          "are from different steps (interrupted while saving?); cannot resume exactly")
    weights = read_weights(out / WEIGHTS_NAME)
    model = unwrap(trainer.model)
    if trainer.ema is not None:
        trainer.ema.load_state_dict(weights)
        model.load_state_dict(state["model"])
    else:
        load_weights(model, weights)
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.step = state["step"]
    set_rng_state(state["rng"])
    return state["epoch"], list(state["history"])


def _csv(history: list[dict[str, Any]]) -> str:
    """metrics.csv: one row per epoch; the columns are the keys the epochs logged (loss parts and the task's
    metrics included), in the order they first appear."""
    buf = io.StringIO()
    cols = list(dict.fromkeys(k for row in history for k in row))
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()
