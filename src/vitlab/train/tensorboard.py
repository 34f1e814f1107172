"""Optional TensorBoard logging (`vitlab train --tensorboard`), through torch.utils.tensorboard.

The event files go into the run directory beside metrics.csv, so `tensorboard --logdir runs` shows every run by
its directory name. What is written, all against the optimizer step (one x axis for every curve):
- `train/loss`, `train/<part>` (each named part the task's objective reports), `train/lr`: one point per optimizer
  step, rank 0's batches, the step's mean over its accumulated batches;
- `epoch/<column>`: every number of a metrics.csv row (train_loss and its parts as epoch means, the task's val
  metrics, lr, images_per_s, epoch_time_s) at that row's `step`;
- `figures/<name>`: the report's pictures (curves, confusion, the task's figures) as images, at the last step.
metrics.csv and metrics.json stay the record; this is a view of the same numbers.

A resumed run appends: its writer purges, when TensorBoard reads the directory, whatever an interrupted earlier
process logged after the checkpoint it resumes from, so no step appears twice.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable

from ..errors import VitlabError

log = logging.getLogger(__name__)

INSTALL = "pip install tensorboard"
EVENTS_GLOB = "events.out.tfevents.*"


def require_tensorboard() -> None:
    """Raise VitlabError naming the pip command when the tensorboard package (an optional extra) is missing."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise VitlabError(f"--tensorboard needs the tensorboard package: {INSTALL} "
                          "(or pip install 'vitlab[tensorboard]')") from None


class TensorBoardLog:
    """Writes a training run's scalars and figures as TensorBoard events into `run_dir`.

    start_step: the optimizer step the run starts after (0 for a new run, the checkpoint's step on --resume).
    A new run (resume=False) first removes event files an earlier run left in the directory (--overwrite)."""

    def __init__(self, run_dir: str | Path, start_step: int = 0, *, resume: bool = False) -> None:
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = Path(run_dir)
        if not resume:
            for old in self.run_dir.glob(EVENTS_GLOB):
                old.unlink()
        # purge_step: TensorBoard drops the events of earlier files from this step on (a process killed after
        # its last checkpoint logged steps the resumed run repeats)
        self.writer = SummaryWriter(log_dir=str(self.run_dir), purge_step=start_step + 1 if resume else None)

    def step(self, step: int, values: dict[str, float]) -> None:
        """One optimizer step: loss, named parts and lr, as Trainer.on_step hands them."""
        for name, value in values.items():
            self.writer.add_scalar(f"train/{name}", value, step)

    def epoch(self, row: dict[str, Any]) -> None:
        """One metrics.csv row: every number in it (but the epoch and step themselves), at the row's step."""
        for name, value in row.items():
            if name not in ("epoch", "step") and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"epoch/{name}", value, row["step"])
        self.writer.flush()                   # a killed run keeps every finished epoch

    def figures(self, paths: Iterable[str | Path], step: int) -> None:
        """The report's PNG files as images, tagged figures/<file name without .png>."""
        import numpy as np
        from PIL import Image

        for path in paths:
            path = Path(path)
            if path.suffix.lower() != ".png" or not path.is_file():
                continue
            with Image.open(path) as im:
                pixels = np.asarray(im.convert("RGB"))      # (H, W, 3) uint8
            self.writer.add_image(f"figures/{path.stem}", pixels, step, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()
