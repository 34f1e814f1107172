"""The training loop. It knows nothing about the model or the task: it gets a model, an objective
(model, inputs, targets) -> (loss, parts), an optimizer, a schedule and a batch transform."""
from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn as nn
from torch import Tensor

from .. import cpu_policy
from ..errors import VitlabError
from ..runtime import autocast
from .ema import ModelEMA

Progress = Callable[..., Iterator]   # tqdm-like: progress(iterable, total=, desc=) with optional set_postfix
StepHook = Callable[[int, dict[str, float]], None]   # (optimizer step, {"loss", each named part, "lr"})


class NonFiniteLoss(VitlabError):
    """The loss became NaN or infinite; raised before the optimizer step, so the weights stay good."""


class Trainer:
    """One optimizer step per batch (or per `grad_accum` batches); gradient clipping; EMA; autocast; an optional
    limit on the seconds of training, checked after every optimizer step."""

    def __init__(self, model: nn.Module, objective: Callable[..., tuple[Tensor, dict[str, Tensor]]],
                 optimizer: torch.optim.Optimizer, scheduler: Any, *, batch_transform: nn.Module,
                 device: torch.device, precision: str = "fp32", clip_grad: float = 0.0,
                 ema: ModelEMA | None = None, grad_accum: int = 1,
                 memory_format: torch.memory_format = torch.contiguous_format,
                 on_step: StepHook | None = None, time_limit_s: float | None = None) -> None:
        self.model, self.objective = model, objective
        self.optimizer, self.scheduler = optimizer, scheduler
        self.batch_transform = batch_transform
        self.device, self.precision = device, precision
        self.clip_grad, self.ema, self.grad_accum = clip_grad, ema, grad_accum
        self.memory_format = memory_format    # channels_last: NHWC batches for conv-heavy models
        self.step = 0            # optimizer steps done
        # called after each optimizer step with the step's mean loss and named parts over its batches and the lr
        # it used (TensorBoard); reading them costs one host sync per step, so only when set
        self.on_step = on_step
        # a time budget: train_epoch stops at the first optimizer step at which train_time_s (every epoch's loop,
        # as epoch_time_s measures it) has reached time_limit_s, and sets out_of_time. The clock is the host's: on
        # CUDA the kernels queued by then still run, as they do at the end of every epoch
        self.time_limit_s = time_limit_s
        self.train_time_s = 0.0  # seconds spent in train_epoch so far (a resumed run sets what its epochs took)
        self.out_of_time = False
        # On CUDA the non-finite check must not wait for the GPU every step. With a fused optimizer the flag
        # stays on the device: the optimizer skips its update there once it is set (the GradScaler mechanism),
        # and the host reads it every `check_every` batches and at the end of the epoch.
        self.deferred_check = device.type == "cuda" and getattr(optimizer, "_step_supports_amp_scaling", False)
        self.check_every = 50
        self._bad_step: Tensor | None = None  # deferred check: first step whose loss was non-finite, -1 = none
        self._since_check = 0                  # batches since the host last read the deferred flag

    def train_epoch(self, batches: Iterable[tuple[Tensor, Any]], epoch: int, total: int | None = None,
                    progress: Progress | None = None) -> dict[str, float]:
        """Train on every batch once. A batch is (uint8 images (B, 3, H, W), targets): a label tensor, or any
        nesting of lists/dicts of tensors (detection: one dict of boxes and labels per image), moved to the device
        as it is. Returns the mean loss, the mean of each named part the objective reports (`train_<name>`),
        images/s, the last lr and the epoch's seconds; over time_limit_s it returns after fewer batches, at a step
        boundary, with out_of_time set."""
        self.model.train()
        self.out_of_time = False
        it = progress(batches, total=total, desc=f"epoch {epoch}") if progress else batches
        loss_sum, seen, t0 = torch.zeros((), device=self.device), 0, time.perf_counter()
        part_sums: dict[str, Tensor] = {}
        step_sums: dict[str, Tensor] = {}   # this optimizer step's batches, for on_step
        micro = 0
        for images, targets in it:
            images = images.to(self.device, non_blocking=True)
            targets = to_device(targets, self.device)
            with torch.no_grad():
                x, targets = self.batch_transform(images, targets)
                x = x.contiguous(memory_format=self.memory_format)
            with autocast(self.device, self.precision):
                loss, parts = self.objective(self.model, x, targets)
            self.check_finite(loss, epoch, force=False)
            # DDP with accumulation: all-reduce the gradients once per optimizer step, not per batch
            skip_sync = hasattr(self.model, "no_sync") and (micro + 1) % self.grad_accum != 0 \
                and total is not None and micro + 1 < total
            with self.model.no_sync() if skip_sync else contextlib.nullcontext():
                (loss / self.grad_accum).backward()
            micro += 1
            batch = images.shape[0]
            loss_sum += loss.detach() * batch
            for name, value in parts.items():
                part_sums[name] = part_sums.get(name, 0.0) + value.detach().float() * batch
            seen += batch
            if self.on_step is not None:
                for name, value in {"loss": loss, **parts}.items():
                    step_sums[name] = step_sums.get(name, 0.0) + value.detach().float()
            if micro % self.grad_accum == 0:
                self.optimizer_step(step_sums, self.grad_accum)
                step_sums = {}
                if self.time_is_up(time.perf_counter() - t0):
                    break
            if progress and hasattr(it, "set_postfix") and micro % 10 == 0:
                shown = {k: f"{v.item():.3f}" for k, v in list(parts.items())[:4]} if len(parts) > 1 else {}
                it.set_postfix(loss=f"{loss.item():.3f}", **shown,
                               lr=f"{self.optimizer.param_groups[0]['lr']:.2e}",
                               img_s=f"{seen / (time.perf_counter() - t0):.0f}")
        if micro % self.grad_accum:
            self.optimizer_step(step_sums, micro % self.grad_accum)
        self.check_finite(None, epoch, force=True)
        elapsed = time.perf_counter() - t0
        self.train_time_s += elapsed
        if not self.out_of_time:      # the epoch's last step and its closing work can also end the budget
            self.time_is_up(0.0)
        from .distributed import sum_over_ranks

        total_seen = max(sum_over_ranks(seen), 1)
        mean_loss = sum_over_ranks(loss_sum) / total_seen   # the job's mean, not one rank's
        parts_mean = {f"train_{k}": float(sum_over_ranks(v) / total_seen) for k, v in part_sums.items()}
        return {"train_loss": float(mean_loss), **parts_mean, "images_per_s": seen / max(elapsed, 1e-9),
                "lr": self.optimizer.param_groups[0]["lr"], "epoch_time_s": elapsed}

    def time_is_up(self, epoch_s: float) -> bool:
        """Whether earlier epochs' training time plus `epoch_s` of this one has reached time_limit_s (sets
        out_of_time). Under torchrun every rank takes the slowest clock's answer, so all stop at the same step."""
        if self.time_limit_s is None:
            return False
        up = self.train_time_s + epoch_s >= self.time_limit_s
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            from .distributed import any_rank

            up = bool(any_rank(torch.tensor(up, device=self.device)).item())
        self.out_of_time = up
        return up

    def check_finite(self, loss: Tensor | None, epoch: int, force: bool) -> None:
        """Raise NonFiniteLoss, on every rank at once, if the loss became NaN/inf: before the optimizer step
        (CPU; CUDA without a fused optimizer), or on CUDA with one, at the next host read of the device flag,
        all updates from the bad step on having been skipped on the device."""
        from .distributed import any_rank

        if loss is not None:
            bad = any_rank(~torch.isfinite(loss.detach()))     # the same verdict on every rank
            if not self.deferred_check:
                if bad.item():
                    where = f"({loss.item()})" if not torch.isfinite(loss) else "(on another rank)"
                    raise NonFiniteLoss(f"non-finite loss {where} at step {self.step + 1} (epoch {epoch}); "
                                        "stopped before the optimizer step, the last checkpoint is intact")
                return
            if self._bad_step is None:
                self._bad_step = torch.full((), -1, dtype=torch.long, device=self.device)
            first = (self._bad_step < 0) & bad
            self._bad_step = torch.where(first, torch.full_like(self._bad_step, self.step + 1), self._bad_step)
            self.optimizer.found_inf = (self._bad_step >= 0).float()   # fused kernels skip their update when set
            self._since_check += 1
        if self._bad_step is None or not (force or self._since_check >= self.check_every):
            return
        self._since_check = 0
        step = int(self._bad_step.item())                               # the one host read
        if step >= 0:
            raise NonFiniteLoss(f"non-finite loss at step {step} (epoch {epoch}); that step and the ones after it "
                                "were skipped on the device, the weights and the last checkpoint are intact")

    def optimizer_step(self, step_sums: dict[str, Tensor] | None = None, batches: int = 1) -> None:
        """One update; then on_step, if set, gets `step_sums` (summed over the step's `batches`) as means."""
        lr = self.optimizer.param_groups[0]["lr"]      # the rate this update uses (the scheduler moves it next)
        if self.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        if self.on_step is not None and step_sums:
            self.on_step(self.step, {**{k: float(v) / batches for k, v in step_sums.items()}, "lr": lr})
        cpu_policy.tick()            # fewer threads while other processes keep cores busy (vitlab.cpu_policy)


def to_device(obj: Any, device: torch.device) -> Any:
    """Tensors moved to `device` inside any nesting of lists, tuples and dicts; other values as they are."""
    if isinstance(obj, Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj
