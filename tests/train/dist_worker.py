"""Worker for test_distributed.py, run by torchrun (2 processes, gloo) or alone (the 1-process reference).

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/train/dist_worker.py OUT_DIR
    python tests/train/dist_worker.py OUT_DIR            # WORLD_SIZE unset: one process, the same global batch

Scenarios: ddp, fsdp, nan (rank 1's loss turns NaN at its third batch), ddp_accum (2 batches per step),
time_limit (rank 1's time limit is up after its first step, rank 0's never); the single process runs single and
single_accum. Each trains a tiny ViT one epoch with vitlab's own pieces
(init_distributed, wrap_model, the sharded `batches`, Trainer) and SGD with momentum, whose update is linear in the
gradient (Adam's first steps are sign(g) * lr, so an element whose gradient is ~0 flips sign on rounding noise and
weights would not be comparable at 1e-5). Rank 0 writes OUT_DIR/<scenario>.pt: the final full weights, the sample
indices every rank saw, the NaN scenario's verdict per rank.
"""
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from vitlab.data import ImageSet, batches
from vitlab.registry import create_model
from vitlab.train.distributed import cleanup, full_state_dict, init_distributed, per_rank_batch, wrap_model
from vitlab.train.objectives import ClassificationObjective
from vitlab.train.trainer import NonFiniteLoss, Trainer

N, GLOBAL_BATCH, SIZE = 96, 16, 8


def dataset() -> ImageSet:
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (N, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
    labels = torch.arange(N) % 4
    images[labels == 0, 0] //= 4          # a learnable signal: class 0 is darker in the red channel
    images[:, 2, 0, 0] = torch.arange(N, dtype=torch.uint8)   # each image carries its index: who saw what
    return ImageSet([str(c) for c in range(4)], labels, SIZE, images=images)


class Normalize01(torch.nn.Module):
    def forward(self, images, labels):
        return images.float() / 127.5 - 1.0, labels


class RecordingObjective(ClassificationObjective):
    """Cross-entropy that can turn into NaN on one rank at one step (the NaN scenario)."""

    def __init__(self, nan_at: int | None = None, nan_rank: int = 1) -> None:
        super().__init__(0.0)
        self.nan_at, self.nan_rank, self.calls = nan_at, nan_rank, 0

    def __call__(self, model, x, targets):
        loss, parts = super().__call__(model, x, targets)
        self.calls += 1
        rank = dist.get_rank() if dist.is_initialized() else 0
        if self.calls == self.nan_at and rank == self.nan_rank:
            loss = loss * float("nan")
        return loss, parts


def train(info, scenario: str) -> dict:
    torch.manual_seed(0)                                       # the same initial weights on every rank
    model = create_model("vit_micro_patch2_8", num_classes=4, depth=2)
    net = wrap_model(model, info, torch.device("cpu"), fsdp=scenario == "fsdp")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    objective = RecordingObjective(nan_at=3 if scenario == "nan" else None)
    # time_limit: the ranks' clocks disagree (one limit spent at once, one never): they must stop together
    limit = (1e-9 if info.rank == 1 else 1e9) if scenario == "time_limit" else None
    trainer = Trainer(net, objective, optimizer, None, batch_transform=Normalize01(), device=torch.device("cpu"),
                      clip_grad=1.0, grad_accum=2 if scenario.endswith("accum") else 1, time_limit_s=limit)
    data = dataset()
    seen: list[int] = []

    def recorded(epoch):
        for images, labels in batches(data, per_rank_batch(GLOBAL_BATCH, info), shuffle=True, seed=0, epoch=epoch,
                                      drop_last=True, rank=info.rank, world_size=info.world_size):
            seen.extend(images[:, 2, 0, 0].tolist())
            yield images, labels

    result: dict = {}
    try:
        stats = trainer.train_epoch(recorded(1), 1, total=N // GLOBAL_BATCH)
        result["train_loss"] = stats["train_loss"]
    except NonFiniteLoss as e:
        result["stopped"] = str(e)
    result["steps"] = trainer.step
    result["weights"] = full_state_dict(net)
    result["seen"] = gather(seen, info)
    result["stopped_on"] = gather([int("stopped" in result)], info)
    result["steps_per_rank"] = gather([trainer.step, int(trainer.out_of_time)], info)
    return result


def train_detection(info) -> dict:
    """A tiny DETR (frozen batch norm: per-rank batch statistics would differ from one process's) on 32 scenes:
    the set loss's box count is averaged over ranks, so DDP's mean gradient equals one process's. eos_coef=1:
    with DETR's 0.1 no-object weight the cross-entropy is a weighted mean per rank (as in detr), whose weights sum
    differently on each rank, so two processes equal one only up to that reweighting."""
    from vitlab.data.detection import detection_batches
    from vitlab.data.scenes import build_scenes_detection
    from vitlab.tasks.detection.loss import DetectionObjective, SetCriterion

    torch.manual_seed(0)
    model = create_model("detr_micro_64", img_size=32, num_queries=5, enc_layers=1, dec_layers=2, dropout=0.0,
                         backbone_norm="frozen")
    net = wrap_model(model, info, torch.device("cpu"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    objective = DetectionObjective(SetCriterion(6, eos_coef=1.0))
    trainer = Trainer(net, objective, optimizer, None, batch_transform=Normalize01(),
                      device=torch.device("cpu"), clip_grad=1.0)
    data = build_scenes_detection(32, seed=0, n_train=32, n_val=4).train
    loader = detection_batches(data, per_rank_batch(8, info), shuffle=True, seed=0, epoch=1, drop_last=True,
                               rank=info.rank, world_size=info.world_size)
    stats = trainer.train_epoch(loader, 1, total=4)
    return {"train_loss": stats["train_loss"], "parts": {k: v for k, v in stats.items() if k.startswith("train_")},
            "steps": trainer.step, "weights": full_state_dict(net)}


def gather(values: list[int], info) -> list[list[int]]:
    if not info.enabled:
        return [values]
    out: list = [None] * info.world_size
    dist.all_gather_object(out, values)
    return out


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    info = init_distributed(torch.device("cpu"))
    scenarios = ["ddp", "fsdp", "nan", "ddp_accum", "time_limit"] if info.enabled else ["single", "single_accum"]
    for scenario in scenarios:
        result = train(info, scenario)
        if info.is_main:
            torch.save(result, Path(out_dir) / f"{scenario}.pt")
    result = train_detection(info)
    if info.is_main:
        torch.save(result, Path(out_dir) / ("detection.pt" if info.enabled else "single_detection.pt"))
    cleanup()


if __name__ == "__main__":
    main(sys.argv[1])
