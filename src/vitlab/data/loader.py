"""Batches of (uint8 images, int64 labels) on the CPU: deterministic order, sharded across ranks like
DistributedSampler.

In-memory sets are indexed directly (no DataLoader, no copies beyond the batch). Lazy sets go through a DataLoader
whose collate drops items that failed to decode; the main process records their paths in imageset.skipped.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..errors import VitlabError
from .imageset import ImageSet

logger = logging.getLogger(__name__)


def batches(imageset: ImageSet, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0,
            drop_last: bool = False, num_workers: int = 0, rank: int = 0,
            world_size: int = 1) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (images uint8 (B, 3, S, S), labels int64 (B,)) for this rank's share of one epoch.

    The order is a permutation from a torch.Generator seeded by (seed, epoch), independent of the global RNG. Across
    ranks: without drop_last the permutation is padded (wrapping round) to a multiple of world_size, so every sample
    is seen at least once per epoch; with drop_last it is cut to a multiple, and the last short batch is dropped.
    A lazy set may yield a smaller batch when some of its files fail to decode, and skips a batch that is all failures.
    """
    index_batches = epoch_batches(len(imageset), batch_size, shuffle=shuffle, seed=seed, epoch=epoch,
                                  drop_last=drop_last, rank=rank, world_size=world_size)
    if imageset.images is not None:
        for idx in index_batches:
            yield imageset.images[idx], imageset.labels[idx]
    else:
        yield from _lazy_batches(imageset, index_batches, num_workers)


def epoch_batches(n: int, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0, drop_last: bool = False,
                  rank: int = 0, world_size: int = 1) -> list[Tensor]:
    """This rank's batches of sample indices for one epoch (epoch_indices split by batch_size; with drop_last, a
    last short batch is dropped). Every task's batch iterator uses it, so all share one order and sharding."""
    if batch_size < 1:
        raise VitlabError(f"batch size must be at least 1, got {batch_size}")
    indices = epoch_indices(n, shuffle=shuffle, seed=seed, epoch=epoch, drop_last=drop_last, rank=rank,
                            world_size=world_size)
    index_batches = list(torch.split(indices, batch_size))
    if drop_last and index_batches and len(index_batches[-1]) < batch_size:
        index_batches.pop()
    return index_batches


def num_batches(imageset: ImageSet | int, batch_size: int, drop_last: bool, world_size: int = 1) -> int:
    """Batches per rank per epoch from `batches` (exact unless a lazy set turns up a whole batch of corrupt files)."""
    n = imageset if isinstance(imageset, int) else len(imageset)
    per_rank = n // world_size if drop_last else math.ceil(n / world_size)
    return per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)


def epoch_indices(n: int, *, shuffle: bool, seed: int = 0, epoch: int = 0, drop_last: bool = False, rank: int = 0,
                  world_size: int = 1) -> Tensor:
    """This rank's sample indices (int64) for one epoch, in order."""
    if not 0 <= rank < world_size:
        raise VitlabError(f"rank {rank} is outside world size {world_size}")
    if shuffle:
        generator = torch.Generator().manual_seed(_mix_seed(seed, epoch))
        indices = torch.randperm(n, generator=generator)
    else:
        indices = torch.arange(n)
    if drop_last:
        indices = indices[:n - n % world_size]
    elif n % world_size and n:
        pad = world_size - n % world_size  # wrap round, repeating if the set is smaller than the padding
        indices = torch.cat([indices, indices.repeat(math.ceil(pad / n))[:pad]])
    return indices[rank::world_size]


def _mix_seed(seed: int, epoch: int) -> int:
    """One 64-bit seed from (seed, epoch) that does not collide the way seed + epoch does."""
    state = np.random.SeedSequence([seed % 2**64, epoch % 2**64]).generate_state(1, dtype=np.uint64)[0]
    return int(state) & (2**63 - 1)


class _TryDecode(Dataset):
    """Wraps a lazy ImageSet: item -> (image or None, label, failed path or None, reason)."""

    def __init__(self, imageset: ImageSet) -> None:
        self.imageset = imageset

    def __len__(self) -> int:
        return len(self.imageset)

    def __getitem__(self, i: int) -> tuple[Tensor | None, int, str | None, str | None]:
        try:
            return self.imageset.read_image(i), int(self.imageset.labels[i]), None, None
        except VitlabError as e:
            path = self.imageset.files[i] if self.imageset.files is not None else str(i)
            return None, int(self.imageset.labels[i]), path, str(e)


def _collate_dropping_failures(items: list) -> tuple[Tensor | None, Tensor, list[tuple[str, str]]]:
    good = [(image, label) for image, label, _, _ in items if image is not None]
    failed = [(path, reason) for image, _, path, reason in items if image is None]
    if not good:
        return None, torch.empty(0, dtype=torch.int64), failed
    return torch.stack([g[0] for g in good]), torch.tensor([g[1] for g in good], dtype=torch.int64), failed


def _lazy_batches(imageset: ImageSet, index_batches: list[Tensor],
                  num_workers: int) -> Iterator[tuple[Tensor, Tensor]]:
    loader = DataLoader(_TryDecode(imageset), batch_sampler=[b.tolist() for b in index_batches],
                        num_workers=num_workers, collate_fn=_collate_dropping_failures)
    for images, labels, failed in loader:
        # workers hold copies of the set: failures are recorded here, in the process that owns imageset
        for path in imageset.add_skipped([path for path, _ in failed]):
            reason = dict(failed)[path]
            logger.warning("%s; skipped", reason if path in reason else f"{path}: {reason}")
        if images is not None:
            yield images, labels
