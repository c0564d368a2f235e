"""torchrun support: process group setup from RANK/WORLD_SIZE/LOCAL_RANK and small helpers.

Under ``torchrun --nproc_per_node=N`` every process runs the same training command.
Rank 0 alone preprocesses first, validates, logs, checkpoints and writes the package;
the others wait at barriers. Without those environment variables everything is a
no-op and the run is a single process.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch

from tumorseg_core.errors import TumorSegError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size`` processes, GPU ``local_rank``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise TumorSegError(f"environment variable {name}={value!r} is not an integer; fix the launcher") from None


def init_distributed(device_name: str) -> DistInfo:
    """Join the process group if launched by torchrun (WORLD_SIZE > 1); return this process's place.

    Uses NCCL when the device is CUDA (each rank on GPU ``LOCAL_RANK``), gloo otherwise.
    """
    world = _env_int("WORLD_SIZE")
    if world is None or world <= 1:
        return DistInfo()
    import torch.distributed as dist

    rank = _env_int("RANK") or 0
    local_rank = _env_int("LOCAL_RANK") or 0
    use_cuda = torch.cuda.is_available() and not str(device_name).startswith("cpu")
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    logger.info("distributed training: rank %d of %d (%s)", rank, world, backend)
    return DistInfo(rank, world, local_rank, backend)


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op in a single process)."""
    if not info.enabled:
        return
    import torch.distributed as dist

    if info.backend == "nccl":
        dist.barrier(device_ids=[info.local_rank])
    else:
        dist.barrier()


def broadcast_flag(info: DistInfo, flag: bool, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every rank (e.g. "stop now")."""
    if not info.enabled:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def main_first(info: DistInfo, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0, then on the other ranks (which then find rank 0's cached files).

    If rank 0's ``fn`` fails, the other ranks are told so and raise too, instead of waiting
    at a barrier rank 0 never reaches (a hung job that holds its GPUs until killed).
    """
    if not info.enabled:
        return fn()
    device = torch.device("cuda", info.local_rank) if info.backend == "nccl" else torch.device("cpu")
    if info.is_main:
        try:
            result = fn()
        except BaseException:
            broadcast_flag(info, True, device)
            raise
        broadcast_flag(info, False, device)
        return result
    if broadcast_flag(info, False, device):
        raise TumorSegError("rank 0 failed while preparing the data (its error is in its log); fix that and rerun")
    return fn()


def all_reduce_mean(info: DistInfo, value: float, device: torch.device) -> float:
    """Mean of ``value`` over ranks (the value itself in a single process)."""
    if not info.enabled:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / info.world_size


def shutdown(info: DistInfo) -> None:
    """Leave the process group (after a final barrier so no rank exits early)."""
    if not info.enabled:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
