"""Multi-process training on torch's own engine: torchrun relaunch, DDP process group, rank helpers.

``llamaforge train --nproc N`` re-executes itself through ``python -m torch.distributed.run`` (torchrun).
Every worker runs the same loop; torchrun's environment (RANK, WORLD_SIZE, ...) tells it which share of
the data is its own. Only rank 0 writes events, checkpoints and the adapter. CPU workers use the gloo
backend, CUDA workers NCCL, one GPU per local rank.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llamaforge_tui.core.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_dist_info() -> DistInfo:
    """What torchrun told this process (a plain process is rank 0 of 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return DistInfo()
    return DistInfo(rank=int(os.environ.get("RANK", "0")), world_size=world,
                    local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def init_process_group(info: DistInfo, device_type: str) -> None:
    """Join torchrun's process group (gloo on CPU, NCCL on CUDA). No-op for a single process."""
    if not info.enabled:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)


def destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: Sequence[float], device: Any, info: DistInfo) -> list[float]:
    """Element-wise sum of small float vectors over ranks (identity for one process)."""
    if not info.enabled:
        return [float(v) for v in values]
    import torch
    import torch.distributed as dist

    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) for v in t.tolist()]


def broadcast_flag(flag: bool, device: Any, info: DistInfo) -> bool:
    """True on every rank if it is true on any rank: stop requests reach all workers at the same step."""
    if not info.enabled:
        return flag
    return all_reduce_sum([1.0 if flag else 0.0], device, info)[0] > 0


def barrier(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()


def torchrun_command(nproc: int, cli_args: Sequence[str]) -> list[str]:
    """The command that runs ``llamaforge <cli_args>`` under torchrun with ``nproc`` workers on this host."""
    if nproc < 2:
        raise ConfigError("--nproc must be at least 2 to launch distributed workers")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "--tee=0", "-m", "llamaforge_tui", *cli_args]
