"""Why a run failed, in words a user can act on: what happened, at which step, what to change, and
where the last good checkpoint is. The loop raises :class:`TrainingFailed`; ``run`` turns it into a
``RunFailed`` event."""

from __future__ import annotations

from pathlib import Path

from llamaforge_tui.core.train import checkpoint as ckpt
from llamaforge_tui.core.train.config import TrainConfig


class TrainingFailed(Exception):
    """Ends the loop with a RunFailed event (OOM, NaN): carries the event's kind and reason."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind, self.reason = kind, reason


def is_oom(exc: BaseException) -> bool:
    """CUDA's (and ROCm's) OutOfMemoryError, MPS's "MPS backend out of memory", or the CPU allocator's error."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def checkpoint_hint(run_dir: Path | None) -> str:
    latest = ckpt.latest_checkpoint(run_dir) if run_dir else None
    if latest is None:
        return "no checkpoint was saved yet"
    return f"the last good checkpoint is {latest.name}, resume with 'llamaforge train --resume {run_dir}'"


def nan_reason(value: float, what: str, step: int, config: TrainConfig, dtype: str, run_dir: Path | None) -> str:
    return (f"the {what} became {value} at step {step}; the weights of that step were not applied. "
            f"Lower learning_rate (now {config.learning_rate:g}), keep max_grad_norm on (now {config.max_grad_norm:g}), "
            f"or try dtype float32 (now {dtype}); {checkpoint_hint(run_dir)}")


def oom_reason(exc: BaseException, step: int, config: TrainConfig, device_type: str, run_dir: Path | None) -> str:
    where = {"cuda": "GPU", "mps": "unified (MPS)"}.get(device_type, "host")
    tips = [] if device_type != "mps" else ["close other apps: the Apple GPU shares the Mac's memory with them"]
    tips += [f"lower batch_size (now {config.batch_size}) and raise grad_accum to keep the global batch",
            f"lower max_seq_len (now {config.max_seq_len})"]
    if not config.gradient_checkpointing:
        tips.append("turn on gradient_checkpointing")
    return f"out of {where} memory at step {step} ({type(exc).__name__}): {'; '.join(tips)}; {checkpoint_hint(run_dir)}"
