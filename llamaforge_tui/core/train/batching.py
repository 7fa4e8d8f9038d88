"""Turning examples into micro-batches with little padding, in an order fixed by (seed, epoch).

Two strategies:
- packing: examples are packed first-fit into rows of ``max_seq_len`` tokens; ``position_ids`` restart at
  0 for each example, which transformers turns into a block-diagonal mask, so no compute is spent on
  padding and examples never see each other;
- length grouping: examples of similar length share a batch, padded only to that batch's longest.

The plan of an epoch is a pure function of the examples, the seed and the epoch number, so the "data
position" saved in a checkpoint (a micro-batch index) is all a resumed run needs to continue exactly,
and every DDP rank computes the same plan and takes its own share of it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from llamaforge_tui.core.train.loss import IGNORE_INDEX

if TYPE_CHECKING:
    import torch


class ExampleLike(Protocol):
    input_ids: Sequence[int]
    labels: Sequence[int]


@dataclass(frozen=True)
class Segment:
    """One example, truncated, with its targets shifted left by one (targets[t] is the label of t+1)."""

    input_ids: tuple[int, ...]
    targets: tuple[int, ...]

    @property
    def n_targets(self) -> int:
        return sum(1 for t in self.targets if t != IGNORE_INDEX)


@dataclass(frozen=True)
class Batch:
    """A micro-batch: rows of segments. Padding (if any) ends a row, with no targets."""

    rows: tuple[tuple[Segment, ...], ...]

    @property
    def n_tokens(self) -> int:
        """Real (non-padding) tokens."""
        return sum(len(s.input_ids) for row in self.rows for s in row)

    @property
    def n_targets(self) -> int:
        return sum(s.n_targets for row in self.rows for s in row)

    @property
    def width(self) -> int:
        return max(sum(len(s.input_ids) for s in row) for row in self.rows)

    def split(self, max_tokens: int) -> tuple[Batch, ...]:
        """The rows in order, in as few groups as keep each group's padded size (rows x its width) within
        ``max_tokens``, as even as that allows; a row wider than ``max_tokens`` goes alone. 0: no split.

        Run one after another with their gradients summed, the groups make exactly the batch's step (the loss
        is summed over targets, not averaged per row), with a fraction of its activation memory."""
        if max_tokens <= 0 or len(self.rows) == 1 or len(self.rows) * self.width <= max_tokens:
            return (self,)
        parts = min(len(self.rows), -(-len(self.rows) * self.width // max_tokens))
        while True:  # the fewest even groups that fit (rows differ in width, so an even split may not)
            size = -(-len(self.rows) // parts)
            groups = [Batch(self.rows[i:i + size]) for i in range(0, len(self.rows), size)]
            if size == 1 or all(len(g.rows) * g.width <= max_tokens for g in groups):
                return tuple(groups)
            parts += 1

    def tensors(self, device: Any, pad_id: int = 0, multiple: int = 0) -> dict[str, torch.Tensor]:
        """input_ids, position_ids and targets as (rows, width) long tensors on ``device``.

        ``multiple`` > 1 rounds the width up to a multiple of it (a shape bucket for compiled layers); the
        extra columns are padding like any other: their own sequence, with no targets."""
        import torch

        width = self.width
        if multiple > 1:
            width = -(-width // multiple) * multiple
        ids, pos, tgt = [], [], []
        for row in self.rows:
            r_ids: list[int] = []
            r_pos: list[int] = []
            r_tgt: list[int] = []
            for seg in row:
                r_ids.extend(seg.input_ids)
                r_pos.extend(range(len(seg.input_ids)))
                r_tgt.extend(seg.targets)
            pad = width - len(r_ids)
            ids.append(r_ids + [pad_id] * pad)
            # Padding sits at the row's end and carries no targets; its positions go on from the last
            # example's, so a batch of one example per row keeps position ids 0..width-1 in every row and
            # transformers runs plain causal attention (SDPA's is_causal: no mask built, and the kernel skips
            # the upper triangle) instead of a packed block-diagonal mask. Causal attention never lets a
            # real token see the padding after it.
            nxt = r_pos[-1] + 1 if r_pos else 0
            pos.append(r_pos + list(range(nxt, nxt + pad)))
            tgt.append(r_tgt + [IGNORE_INDEX] * pad)
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long, device=device),
            "position_ids": torch.tensor(pos, dtype=torch.long, device=device),
            "targets": torch.tensor(tgt, dtype=torch.long, device=device),
        }


def to_segments(examples: Sequence[ExampleLike], max_seq_len: int) -> list[Segment]:
    """Shift labels into next-token targets; drop examples with nothing to learn."""
    segments = []
    for ex in examples:
        ids = tuple(int(i) for i in ex.input_ids[:max_seq_len])
        labels = [int(x) for x in ex.labels[:max_seq_len]]
        targets = tuple(labels[1:]) + (IGNORE_INDEX,)
        seg = Segment(ids, targets)
        if len(ids) >= 2 and seg.n_targets > 0:
            segments.append(seg)
    return segments


def _pack_rows(segments: list[Segment], max_seq_len: int) -> list[tuple[Segment, ...]]:
    """First-fit over the last few open rows (keeps the shuffled order mostly, and is linear time)."""
    rows: list[list[Segment]] = []
    room: list[int] = []
    window = 64
    for seg in segments:
        n = len(seg.input_ids)
        lo = max(0, len(rows) - window)
        for i in range(lo, len(rows)):
            if room[i] >= n:
                rows[i].append(seg)
                room[i] -= n
                break
        else:
            rows.append([seg])
            room.append(max_seq_len - n)
    return [tuple(r) for r in rows]


def plan_epoch(segments: Sequence[Segment], *, batch_size: int, max_seq_len: int, packing: bool,
               seed: int, epoch: int) -> list[Batch]:
    """The micro-batches of one epoch, in training order. Deterministic in (segments, seed, epoch)."""
    rng = random.Random(f"llamaforge-{seed}-{epoch}")
    order = list(segments)
    rng.shuffle(order)
    if packing:
        rows = _pack_rows(order, max_seq_len)
    else:
        # Sort within large windows by length, so batches are homogeneous but the epoch still mixes.
        rows = []
        window = batch_size * 64
        for i in range(0, len(order), window):
            chunk = sorted(order[i:i + window], key=lambda s: len(s.input_ids))
            rows.extend((s,) for s in chunk)
    batches = [Batch(tuple(rows[i:i + batch_size])) for i in range(0, len(rows), batch_size)]
    rng.shuffle(batches)
    return batches


class BatchStream:
    """Micro-batches by global position across epochs: position p is batch p % n of epoch p // n."""

    def __init__(self, segments: Sequence[Segment], *, batch_size: int, max_seq_len: int, packing: bool,
                 seed: int) -> None:
        self._segments = list(segments)
        self._kw = {"batch_size": batch_size, "max_seq_len": max_seq_len, "packing": packing, "seed": seed}
        self._epoch = -1
        self._plan: list[Batch] = []
        self.batches_per_epoch = len(self._plan_for(0))

    def _plan_for(self, epoch: int) -> list[Batch]:
        if epoch != self._epoch:
            self._plan = plan_epoch(self._segments, epoch=epoch, **self._kw)  # type: ignore[arg-type]
            self._epoch = epoch
        return self._plan

    def __getitem__(self, position: int) -> Batch:
        epoch, index = divmod(position, self.batches_per_epoch)
        return self._plan_for(epoch)[index]

    def epoch_of(self, position: int) -> float:
        return position / self.batches_per_epoch if self.batches_per_epoch else 0.0
