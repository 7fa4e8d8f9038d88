"""Loss and perplexity on held-out examples, masked as training masks them, for the trainer and for evaluation.

The trainer's periodic eval, its end-of-run base-vs-tuned summary and ``llamaforge eval`` (core.infer) all
measure through :func:`masked_loss`, so "eval loss" means one thing everywhere: the summed cross-entropy of
the tokens that carry a label (the assistant's replies; every token of a text document) over the count of
those tokens, from the same batches (``to_segments`` + ``plan_epoch``) and the same lean head loss
(``causal_lm_loss_sum``). It lives here, in the train layer, because the trainer may not import core.infer.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from llamaforge_tui.core.train.batching import (
    Batch,
    ExampleLike,
    plan_epoch,
    to_segments,
)

# exp() of a mean loss above this overflows a float; such a perplexity is reported as infinite.
_MAX_LOG_PPL = 700.0


@dataclass(frozen=True)
class LossTotals:
    """Summed token loss and the number of tokens it covers; ``complete`` is False when a stop cut it short."""

    loss_sum: float
    tokens: int
    complete: bool = True

    @property
    def mean(self) -> float | None:
        return self.loss_sum / self.tokens if self.tokens else None

    @property
    def perplexity(self) -> float | None:
        return perplexity(self.mean)


def perplexity(mean_loss: float | None) -> float | None:
    """exp(mean token loss), in nats; infinite past float range, None for no loss."""
    if mean_loss is None or math.isnan(mean_loss):
        return None
    return math.exp(mean_loss) if mean_loss < _MAX_LOG_PPL else math.inf


def eval_batches(examples: Sequence[ExampleLike], *, batch_size: int, max_seq_len: int, packing: bool = False,
                 seed: int = 0) -> list[Batch]:
    """Examples in the micro-batches the trainer's eval uses (epoch 0 of the same plan)."""
    return plan_epoch(to_segments(examples, max_seq_len), batch_size=batch_size, max_seq_len=max_seq_len,
                      packing=packing, seed=seed, epoch=0)


def masked_loss(loss_fn: Callable[..., Any], batches: Sequence[Batch], device: Any, pad_id: int, *,
                autocast: Callable[[], Any] | None = None, rank: int = 0, world_size: int = 1,
                stop_event: threading.Event | None = None,
                on_batch: Callable[[int, int], None] | None = None) -> LossTotals:
    """Summed loss of ``batches`` under ``loss_fn(input_ids=, position_ids=, targets=)`` (a
    ``train.loss.loss_module``), without gradients. With ``world_size`` > 1 this process takes every
    ``world_size``-th batch from ``rank`` (the caller sums the totals over ranks). ``stop_event`` ends it
    between batches (``complete=False``); ``on_batch(done, total)`` reports progress."""
    import torch

    total, count = 0.0, 0
    mine = [b for i, b in enumerate(batches) if i % world_size == rank]
    with torch.no_grad():
        for done, batch in enumerate(mine, 1):
            if stop_event is not None and stop_event.is_set():
                return LossTotals(total, count, complete=False)
            with autocast() if autocast is not None else contextlib.nullcontext():
                total += float(loss_fn(**batch.tensors(device, pad_id)))
            count += batch.n_targets
            if on_batch is not None:
                on_batch(done, len(mine))
    return LossTotals(total, count)
