"""Training on several processes with PyTorch's own engine: torchrun + DistributedDataParallel or FSDP2.

    torchrun --nproc_per_node=4 -m vitlab train --model vit_base_patch16_224 --data DIR      # DDP
    torchrun --nproc_per_node=8 -m vitlab train --model vit_huge_patch14_224 --fsdp ...      # FSDP2 per block

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; `init_distributed` reads them and starts the process group (NCCL on
GPUs, gloo on CPUs). `--batch-size` stays the *global* batch: each of the N ranks takes batch/N images of the
same permutation (vitlab.data.batches shards it like DistributedSampler), and since DDP averages gradients the
optimizer sees exactly what one process with the whole batch would see. Only rank 0 logs, writes checkpoints
and metrics; every rank evaluates the same validation set (so FSDP's gathers line up) and reaches the same
numbers. A non-finite loss on any rank stops all of them together (the flag is all-reduced).
"""
from __future__ import annotations

import atexit
import gc
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..errors import VitlabError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0                 # global process index
    world_size: int = 1           # processes in the job
    local_rank: int = 0           # index on this machine (selects the GPU)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """Rank, world size and local rank from the variables torchrun sets; a single process when they are absent."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise VitlabError("RANK / WORLD_SIZE / LOCAL_RANK must be integers (as torchrun sets them)") from None
    if not 0 <= rank < max(world, 1):
        raise VitlabError(f"RANK {rank} is outside WORLD_SIZE {world}")
    return DistInfo(rank, world, local)


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun prepared (if any). Returns this process's DistInfo.

    GPU jobs use NCCL and pin each process to cuda:LOCAL_RANK; CPU jobs use gloo."""
    info = env_info()
    if not info.enabled:
        return info
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), info.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(info.local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=info.rank, world_size=info.world_size)
    atexit.register(_destroy_at_exit)        # free the group's threads before the interpreter shuts down
    log.debug("rank %d/%d joined the %s process group", info.rank, info.world_size, backend)
    return info


def process_device(device: torch.device, info: DistInfo) -> torch.device:
    """The device this rank trains on: cuda:LOCAL_RANK on GPUs, the CPU otherwise."""
    return torch.device("cuda", info.local_rank) if device.type == "cuda" and info.enabled else device


def cleanup() -> None:
    """Leave the process group at the normal end of a job: wait for every rank, then destroy it (a rank that
    tears down gloo while a peer still talks to it can abort)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        gc.collect()             # free DDP reducers (reference cycles) while the group they hold still exists
        dist.destroy_process_group()


def _destroy_at_exit() -> None:
    # no barrier here: after an error on one rank the others may never arrive
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def per_rank_batch(batch_size: int, info: DistInfo) -> int:
    """The share of the global batch one rank takes; the global batch must split evenly."""
    if batch_size % info.world_size:
        raise VitlabError(f"--batch-size {batch_size} does not split evenly over {info.world_size} processes")
    return batch_size // info.world_size


def wrap_model(model: nn.Module, info: DistInfo, device: torch.device, fsdp: bool = False) -> nn.Module:
    """DistributedDataParallel, or FSDP2 (fully_shard) on every transformer block and then on the whole model.

    With FSDP each rank holds 1/N of every parameter, gradient and optimizer state; a block's full weights exist
    only while it runs (gathered before, freed after), which is what lets ViT-L/H train where a replica does not fit.
    """
    if not info.enabled:
        if fsdp:
            raise VitlabError("--fsdp needs several processes: start with torchrun --nproc_per_node=N -m vitlab train")
        return model
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        blocks = getattr(model, "blocks", None)
        if blocks is None:
            raise VitlabError(f"--fsdp shards per transformer block; {type(model).__name__} has no `blocks`")
        for block in blocks:
            fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (FSDP2 shards in place: there is no wrapper)."""
    return getattr(model, "module", model)


def any_rank(flag: Tensor) -> Tensor:
    """True on every rank if `flag` (a bool scalar) is True on any: an all-reduce with MAX, no host sync."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    as_int = flag.to(torch.int32)
    dist.all_reduce(as_int, op=dist.ReduceOp.MAX)
    return as_int.bool()


def sum_over_ranks(value: Tensor | float) -> Tensor | float:
    """The sum of `value` over all ranks (itself in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = value.detach().clone() if isinstance(value, Tensor) else torch.tensor(float(value), dtype=torch.float64)
    if dist.get_backend() == "nccl" and t.device.type != "cuda":
        t = t.cuda()
    dist.all_reduce(t)
    return t if isinstance(value, Tensor) else float(t)


def full_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The whole model's weights, gathered from the shards under FSDP (a collective: call it on every rank;
    rank 0 receives the full dict on the CPU, the others an empty one)."""
    if _is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        model.reshard()
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return unwrap(model).state_dict()


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer state as one process would hold it (a collective under FSDP)."""
    if _is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        model.reshard()          # an eval forward leaves the root's gathered weights in place; shard them back
        return get_optimizer_state_dict(model, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return optimizer.state_dict()


def _is_fsdp(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
