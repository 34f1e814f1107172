"""`vitlab train`: train and evaluate a model; with no arguments, the main job (a small ViT on digits)."""
from __future__ import annotations

import argparse
import functools
import sys
import time
from dataclasses import fields
from typing import Any

from ..checks import parse_model_args, text_arg
from ..layers.efficient_attention import ATTENTION_TYPES
from ..train.run import TrainConfig

_HELP = {
    "model": "registered model name (`vitlab models`)", "data": "digits, shapes, or a path (ImageFolder, "
    "CIFAR-10/100 python folder, MNIST idx files)", "out": "run directory (default runs/MODEL-DATA)",
    "epochs": "epochs the schedule spans", "stop_at": "stop after this epoch; continue later with --resume",
    "time_limit_s": "seconds of training (the training loop, no evaluation): stop at the first optimizer step "
    "past them, evaluate and save (the schedule still spans --epochs)",
    "checkpoint": "initial weights: a run directory or a foreign checkpoint (fine-tuning)",
    "teacher": "distillation teacher: a run directory or checkpoint", "distill": "hard or soft distillation",
    "precision": "fp32, bf16 or auto (bf16 on CUDA, fp32 on CPU)", "ema": "EMA decay, e.g. 0.999 (0 = off)",
    "fsdp": "under torchrun: shard every block with FSDP2 (ViT-L/H) instead of DDP replicas",
    "grad_checkpointing": "recompute block activations in backward (less memory, ~1/3 more compute)",
    "schedule": "learning-rate schedule: cosine (warm-up + cosine decay) or noam (the 2017 Transformer's warm-up + "
    "1/sqrt(step), peaking at --lr)",
    "compile": "torch.compile the model", "channels_last": "NHWC images and conv weights (conv-heavy models)",
    "report": "write the closing pictures (curves, confusion matrix, rollout) into the run directory",
    "tensorboard": "also write TensorBoard events (per-step and per-epoch scalars, the report's figures) into the "
    "run directory; needs pip install tensorboard",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train and evaluate a model (no arguments: the main job)")
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        if f.name in ("model_args", "hflip", "out"):
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if f.type == "bool":   # on/off switches: --compile / --no-compile
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                           help=_HELP.get(f.name, "") + f" (default {'on' if default else 'off'})")
            continue
        kind = {"int": int, "float": float, "str": str}.get(str(f.type).split(" ")[0].replace("'", ""), None)
        if kind is None:   # Optional types: take the type of the non-None part
            kind = float if "float" in str(f.type) else int if "int" in str(f.type) else str
        # default None: given values are told apart from defaults (a resumed run keeps its own config)
        p.add_argument(flag, type=kind, default=None,
                       help=_HELP.get(f.name, "") + f" (default {default})")
    p.add_argument("--out", type=text_arg, default=None, help=_HELP["out"])
    p.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=None,
                   help="random horizontal flips (default: on, except for digits)")
    p.add_argument("--attention", default=None, choices=ATTENTION_TYPES,
                   help="ViT attention type: " + ", ".join(ATTENTION_TYPES))
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra model constructor argument (repeatable), e.g. --model-arg pool=avg")
    p.add_argument("--resume", metavar="RUN_DIR", type=text_arg,
                   help="continue a run (its config; --epochs may extend it)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    p.set_defaults(func=run)


_RESUME_OPTIONS = {"epochs", "stop_at", "time_limit_s", "device", "workers", "precision", "compile", "channels_last",
                   "grad_checkpointing", "tensorboard"}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    from ..train.run import load_run_config, resolve_model_name

    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
             if getattr(args, f.name, None) is not None}
    model_args = parse_model_args(args.model_arg)
    if args.attention:
        model_args["attention"] = args.attention
    TrainConfig(**{**given, "out": args.out or "runs/train"}).validate()   # the values given, before anything loads
    if args.resume:
        return _resumed_config(load_run_config(args.resume), given, model_args, args.out).validate()
    values = {**{f.name: getattr(TrainConfig(), f.name) for f in fields(TrainConfig)}, **given}
    values["model_args"] = model_args
    values["out"] = args.out or "runs/train"
    cfg = resolve_model_name(TrainConfig(**values).validate())
    if not args.out:
        data_name = cfg.data.rstrip("/").split("/")[-1] or "data"
        cfg.out = f"runs/{cfg.model}-{data_name}"
    return cfg


def _resumed_config(run: TrainConfig, given: dict, model_args: dict, out: str | None) -> TrainConfig:
    """The run's own config with the options that may change (--epochs, --device, ...) applied. Repeating the
    original command is fine: a value equal to the run's is no change; a real change is refused, naming the old
    and the new value."""
    from pathlib import Path

    from ..errors import VitlabError

    changed = [f"--{k.replace('_', '-')} {getattr(run, k)!r} -> {v!r}" for k, v in sorted(given.items())
               if k not in _RESUME_OPTIONS and getattr(run, k) != v]
    if model_args and {**run.model_args, **model_args} != run.model_args:
        changed.append(f"--model-arg {run.model_args!r} -> {model_args!r}")
    if out is not None and Path(out).resolve() != Path(run.out).resolve():
        changed.append(f"--out {run.out!r} -> {out!r}")
    if changed:
        raise VitlabError("--resume continues a run with its own settings; these differ from the run's: "
                          + "; ".join(changed))
    return TrainConfig.from_dict({**vars(run), **{k: v for k, v in given.items() if k in _RESUME_OPTIONS}})


class TimedProgress:
    """Progress off a terminal (a log file, CI): one line on stderr every `interval` seconds within an epoch,
    instead of tqdm's bar (which would be one line per update, or nothing). Called as tqdm is:
    progress(iterable, total=, desc=); the trainer's set_postfix values go on the line."""

    def __init__(self, iterable: Any, total: int | None = None, desc: str = "", interval: float = 30.0,
                 stream: Any = None) -> None:
        self.iterable, self.total, self.desc, self.interval = iterable, total, desc, interval
        self.stream = stream if stream is not None else sys.stderr
        self.postfix: dict[str, Any] = {}

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values

    def __iter__(self) -> Any:
        start = last = time.monotonic()
        for done, item in enumerate(self.iterable, 1):
            yield item
            now = time.monotonic()
            if now - last >= self.interval:
                last = now
                of = f"/{self.total}" if self.total else ""
                shown = "".join(f"  {k} {v}" for k, v in self.postfix.items())
                print(f"{self.desc}: {done}{of} batches, {now - start:.0f} s{shown}", file=self.stream, flush=True)


def progress_for(stream: Any, interval: float = 30.0) -> Any:
    """tqdm's bar on a terminal, else a line every `interval` seconds."""
    if stream.isatty():
        from tqdm import tqdm

        return functools.partial(tqdm, leave=False, dynamic_ncols=True, file=stream)
    return functools.partial(TimedProgress, interval=interval, stream=stream)


def run(args: argparse.Namespace) -> int:
    from ..train.distributed import cleanup, env_info
    from ..train.run import run_training

    cfg = config_from_args(args)
    progress = progress_for(sys.stderr)
    m = run_training(cfg, resume=bool(args.resume), overwrite=args.overwrite, progress=progress)
    cleanup()                    # under torchrun: leave the process group together
    if not env_info().is_main:   # rank 0 reports
        return 0
    from ..tasks import get_task

    print(f"{m['model']} on {m['data']}: {get_task(m['task']).summary(m)}")
    print(f"{m['epochs']} epochs, {m['train_images_per_s']:.0f} train images/s, {m['wall_time_s']:.0f} s, "
          f"{m['skipped_images']} skipped images; run directory: {cfg.out}")
    return 0
