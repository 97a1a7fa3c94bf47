"""Data-parallel training over processes started by ``torchrun`` (gloo on CPU, nccl on CUDA).

Each rank trains on its slice of every global batch; the loss sees the embeddings of all ranks
(gathered with gradients), so its negatives are global, exactly as with one big batch; DDP then
averages the gradients. Only rank 0 logs and writes. Without torchrun's environment (or with
a plain ``python -m ivt train``) everything here is a no-op and training runs in one process;
``torchrun --nproc_per_node=1`` runs the same code path as many processes, with one.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ivt.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank among ``world_size`` processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launched: bool = False  # started by torchrun: a process group exists (even of one process)

    @property
    def enabled(self) -> bool:
        return self.launched

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> tuple[DistInfo, str]:
    """Join the process group torchrun describes; returns the info and the device to use.

    Under torchrun each rank takes CUDA device ``LOCAL_RANK`` (nccl) when the configured device
    is ``auto``/``cuda``, else the CPU (gloo).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and "TORCHELASTIC_RUN_ID" not in os.environ:
        return DistInfo(), device_name
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device={device_name} under torchrun, but CUDA is not available")
        if device_name.startswith("cuda:"):
            raise ConfigError("under torchrun each process uses the GPU of its LOCAL_RANK; set train.device=cuda")
        torch.cuda.set_device(local)
        device_name = f"cuda:{local}"
    else:
        device_name = "cpu"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistInfo(rank, world, local, launched=True), device_name


def shutdown_distributed() -> None:
    """Leave the process group (if one was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def gather_with_grad(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate ``x`` of every rank along dim 0 (rank order); gradients flow back to each rank.

    Every rank computes the same global loss; the all-gather backward sums each rank's gradient
    for this rank's slice, and DDP's averaging divides by the world size again, which together
    give exactly the gradient of the single-process loss.
    """
    if not info.enabled:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def gather_labels(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate an integer tensor of every rank (no gradient)."""
    if not info.enabled:
        return x
    parts = [torch.empty_like(x) for _ in range(info.world_size)]
    dist.all_gather(parts, x)
    return torch.cat(parts, dim=0)


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op in one process)."""
    if info.enabled:
        dist.barrier()


def broadcast_flag(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every rank (e.g. "the time budget is spent")."""
    if not info.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.broadcast(t, 0)
    return bool(t.item())


def max_over_ranks(value: int, info: DistInfo, device: torch.device) -> int:
    """The largest ``value`` of all ranks (e.g. a length every rank pads to before a gather)."""
    if not info.enabled:
        return value
    t = torch.tensor([value], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())
