"""What the training loop needs around it: its result, per-position seeds, the memory figure, and a GC that
leaves the long-lived heap alone. Kept out of ``trainer`` so the loop reads in one screen."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    status: str  # "finished" | "stopped" | "failed"
    step: int
    total_steps: int
    final_loss: float | None
    adapter_path: Path | None = None
    reason: str | None = None
    kind: str | None = None  # RunFailed.kind when failed

    @property
    def ok(self) -> bool:
        return self.status != "failed"


def seed_for(seed: int, position: int) -> int:
    """Seed for one micro-batch: dropout depends only on (seed, data position), so resume is exact."""
    return (seed * 1_000_003 + position * 7_919 + 17) % (2**63 - 1)


def peak_memory_bytes(device: Any) -> int | None:
    import torch

    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    if device.type == "mps":  # no peak counter on MPS: what Metal holds for this process now
        return int(torch.mps.driver_allocated_memory())
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except (ImportError, OSError):  # pragma: no cover
        return None


@contextlib.contextmanager
def long_lived_heap() -> Iterator[None]:
    """Keep the garbage collector off what lives for the whole run.

    The model, the optimizer and everything else loaded before the first step (and, in the TUI, the
    app's widgets) stay until the run ends, yet every full collection walks all of them while holding
    the GIL: measured with the TUI in the same process, 0.3 s pauses of the training thread. Frozen,
    they are skipped; new garbage is still collected. Unfrozen at the end, so a long-lived process
    (the TUI) can still free the run's reference cycles once the run is gone.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
