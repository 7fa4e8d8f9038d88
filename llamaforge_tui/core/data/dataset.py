"""Datasets: load, detect, validate, render and measure, for the preview and for training alike.

The trainer and the Dataset pane call the same functions, so what the preview shows is what is
trained. The pieces live in ``data_records`` (the internal shape and its checks), ``data_readers``
(file containers), ``chat_templates`` (which template) and ``data_encode`` (ids, labels, stats);
this module ties them together and re-exports the public names.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamaforge_tui.core.data.chat_templates import (
    FAMILY_TEMPLATES,
    ChatTemplateChoice,
    render_chat,
    resolve_chat_template,
)
from llamaforge_tui.core.data.encode import (
    IGNORE_INDEX,
    Example,
    RecordEncoder,
    RecordRejected,
    StatsAccumulator,
    TokenStats,
    encode_record,
    render_for_display,
    steps_per_epoch,
    token_stats,
)
from llamaforge_tui.core.data.readers import (
    DEFAULT_MAX_RECORD_BYTES,
    DatasetFormat,
    Progress,
    detect_format,
    iter_rows,
)
from llamaforge_tui.core.data.records import (
    EXPECTED_SHAPES,
    Conversation,
    InvalidRecord,
    Message,
    Record,
    RecordError,
    TextDoc,
    row_to_record,
)
from llamaforge_tui.core.errors import DatasetError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "IGNORE_INDEX", "FAMILY_TEMPLATES", "ChatTemplateChoice", "Conversation", "DatasetFormat", "DatasetLoad",
    "Example", "Message", "PreparedDataset", "Record", "RecordError", "TextDoc", "TokenStats", "detect_format",
    "encode_record", "iter_records", "load_dataset", "prepare_dataset", "render_chat", "render_for_display",
    "resolve_chat_template", "scan_token_stats", "steps_per_epoch", "token_stats",
]

POLICIES = ("skip", "strict")
STRICT_SHOWN = 5  # strict mode stops after this many errors and lists them


@dataclass
class DatasetLoad:
    """Records read from a file. ``total`` counts every record seen, good or bad."""

    format: str  # record shape: chat | sharegpt | alpaca | prompt_completion | text | document
    records: list[Record]
    errors: list[RecordError]
    total: int
    container: str = "jsonl"
    path: str = ""
    complete: bool = True  # False when ``limit`` stopped reading early

    @property
    def valid(self) -> int:
        return len(self.records)

    @property
    def invalid(self) -> int:
        return len(self.errors)


@dataclass
class PreparedDataset:
    """What the trainer consumes: encoded train/eval examples plus what the user should know."""

    train: list[Example]
    eval: list[Example]
    stats: TokenStats
    format: str
    errors: list[RecordError]
    template_name: str
    container: str = "jsonl"
    total: int = 0
    template: ChatTemplateChoice | None = None
    warnings: list[str] = field(default_factory=list)


def _check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise DatasetError(f"unknown policy {policy!r}; expected one of {', '.join(POLICIES)}")


def _strict_failure(path: Path | str, errors: list[RecordError], stopped: bool) -> DatasetError:
    shown = "; ".join(f"line {e.line}: {e.reason}" for e in errors[:STRICT_SHOWN])
    more = " (stopped reading there)" if stopped else (
        f" and {len(errors) - STRICT_SHOWN} more" if len(errors) > STRICT_SHOWN else "")
    return DatasetError(f"{path}: {len(errors)} invalid record(s){more} (policy strict): {shown}")


def iter_records(path: str | Path, *, format: str | None = None, column_map: Mapping[str, str] | None = None,
                 limit: int | None = None, fmt: DatasetFormat | None = None,
                 max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
                 progress: Progress | None = None) -> Iterator[Record | RecordError]:
    """Stream validated records (and the errors of bad ones) without holding the file in memory.

    ``limit`` counts records read, good or bad. ``fmt`` skips detection when the caller already has it.
    """
    path = Path(path).expanduser()
    fmt = fmt or detect_format(path, format, column_map)
    seen = 0
    for line, row in iter_rows(path, fmt, max_record_bytes=max_record_bytes, progress=progress):
        if limit is not None and seen >= limit:
            return
        seen += 1
        if isinstance(row, RecordError):
            yield row
            continue
        try:
            yield row_to_record(row, fmt.shape, line, column_map)
        except InvalidRecord as exc:
            yield RecordError(line, str(exc))


def load_dataset(path: str | Path, *, format: str | None = None, policy: str = "skip",
                 column_map: Mapping[str, str] | None = None, limit: int | None = None,
                 max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> DatasetLoad:
    """Read a dataset into records. ``skip`` keeps the good ones and lists the bad; ``strict`` raises.

    With ``limit`` (the preview) only the first records are read, so a huge file opens at once; an
    empty result is then not an error.
    """
    _check_policy(policy)
    path = Path(path).expanduser()
    fmt = detect_format(path, format, column_map)
    records: list[Record] = []
    errors: list[RecordError] = []
    total = 0
    complete = True
    for item in iter_records(path, fmt=fmt, column_map=column_map, max_record_bytes=max_record_bytes):
        if limit is not None and total >= limit:
            complete = False
            break
        total += 1
        if isinstance(item, RecordError):
            errors.append(item)
            if policy == "strict" and len(errors) >= STRICT_SHOWN:
                raise _strict_failure(path, errors, stopped=True)
        else:
            records.append(item)
    if policy == "strict" and errors:
        raise _strict_failure(path, errors, stopped=False)
    if complete and not records:
        if not errors:
            raise DatasetError(f"empty dataset: {path} has no records; expected {EXPECTED_SHAPES}")
        shown = "; ".join(f"line {e.line}: {e.reason}" for e in errors[:3])
        raise DatasetError(f"no valid records in {path} ({len(errors)} invalid): {shown}")
    return DatasetLoad(fmt.shape, records, errors, total, fmt.container, str(path), complete)


def split_indices(n: int, eval_split: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded train/eval split of ``range(n)``; both keep file order. Eval gets at least one example
    when ``eval_split > 0`` and there are two or more, and train always keeps one."""
    if not 0.0 <= eval_split < 1.0:
        raise DatasetError(f"eval split must be in [0, 1), got {eval_split}")
    n_eval = 0 if eval_split == 0 or n < 2 else min(n - 1, max(1, round(n * eval_split)))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    eval_set = set(order[:n_eval])
    return [i for i in range(n) if i not in eval_set], sorted(eval_set)


def prepare_dataset(path: str | Path, tokenizer: PreTrainedTokenizerBase, template: ChatTemplateChoice | None, *,
                    max_seq_len: int, format: str | None = None, policy: str = "skip", eval_split: float = 0.0,
                    seed: int = 0, column_map: Mapping[str, str] | None = None,
                    progress: Callable[[int, int], None] | None = None) -> PreparedDataset:
    """Load, validate, render and encode a whole dataset for training.

    Records that cannot be trained (e.g. a prompt that fills ``max_seq_len``) join the errors, and
    ``strict`` fails on them too. Raises DatasetError when nothing trainable is left.
    """
    loaded = load_dataset(path, format=format, policy=policy, column_map=column_map)
    if template is None and any(isinstance(r, Conversation) for r in loaded.records):
        template = resolve_chat_template(tokenizer)
    encoder = RecordEncoder(tokenizer, template, max_seq_len)
    examples: list[Example] = []
    errors = list(loaded.errors)
    n = len(loaded.records)
    for i, record in enumerate(loaded.records):
        try:
            examples.extend(encoder.encode_all(record))
        except RecordRejected as exc:
            errors.append(RecordError(exc.line, exc.reason))
            if policy == "strict":
                raise _strict_failure(path, [RecordError(exc.line, exc.reason)], stopped=False) from None
        if progress is not None and (i % 64 == 0 or i == n - 1):
            progress(i + 1, n)
    if not examples:
        shown = "; ".join(f"line {e.line}: {e.reason}" for e in errors[:3])
        raise DatasetError(f"{path}: no trainable tokens in any record ({shown}); each record needs an "
                           f"assistant reply (or text) within max_seq_len {max_seq_len}")
    errors.sort(key=lambda e: e.line)
    train_idx, eval_idx = split_indices(len(examples), eval_split, seed)
    stats = token_stats(examples, max_seq_len)
    if stats.total_trainable == 0:  # pragma: no cover - encode() rejects such records already
        raise DatasetError(f"{path}: the dataset has no trainable tokens")
    return PreparedDataset(
        train=[examples[i] for i in train_idx], eval=[examples[i] for i in eval_idx], stats=stats,
        format=loaded.format, errors=errors, template_name=template.name if template else "none",
        container=loaded.container, total=loaded.total, template=template,
        warnings=_warnings(errors, stats, template, max_seq_len))


def _warnings(errors: list[RecordError], stats: TokenStats, template: ChatTemplateChoice | None,
              max_seq_len: int) -> list[str]:
    """What a user should hear before training starts (the trainer logs these)."""
    out: list[str] = []
    if errors:
        out.append(f"{len(errors)} invalid record(s) skipped (first: line {errors[0].line}: {errors[0].reason})")
    truncated = stats.over_max_seq_len - stats.split_documents
    if truncated > 0:
        out.append(f"{truncated} conversation(s) longer than max_seq_len {max_seq_len} are truncated")
    if template is not None and template.origin == "fallback":
        out.append(f"no chat template fits this model ({template.reason}); using the plain format")
    return out


@dataclass
class StatsScan:
    """Result of a streaming pass: stats plus counts, without the examples themselves."""

    stats: TokenStats
    format: DatasetFormat
    total: int
    valid: int
    errors: list[RecordError]
    errors_dropped: int = 0  # errors past ``max_errors`` are counted, not kept
    cancelled: bool = False


def scan_token_stats(path: str | Path, tokenizer: PreTrainedTokenizerBase | None,
                     template: ChatTemplateChoice | None, *, max_seq_len: int, format: str | None = None,
                     column_map: Mapping[str, str] | None = None, progress: Progress | None = None,
                     stop_event: threading.Event | None = None, max_errors: int = 1000,
                     policy: str = "skip") -> StatsScan:
    """One streaming pass over the whole file: memory stays flat however big it is.

    Without a tokenizer only validation runs (stats stay zero). ``progress(bytes_done, bytes_total)``;
    setting ``stop_event`` ends the pass early with ``cancelled=True``. ``strict`` raises after the
    first few errors; either policy raises when nothing valid (or nothing trainable) is found.
    """
    _check_policy(policy)
    path = Path(path).expanduser()
    fmt = detect_format(path, format, column_map)
    if tokenizer is not None and template is None and fmt.shape not in ("text", "document"):
        template = resolve_chat_template(tokenizer)
    encoder = RecordEncoder(tokenizer, template, max_seq_len) if tokenizer is not None else None
    acc = StatsAccumulator(max_seq_len)
    errors: list[RecordError] = []
    dropped = total = valid = rejected = 0
    cancelled = False

    def error(err: RecordError) -> None:
        nonlocal dropped
        if len(errors) < max_errors:
            errors.append(err)
        else:
            dropped += 1
        if policy == "strict" and len(errors) >= STRICT_SHOWN:
            raise _strict_failure(path, errors, stopped=True)

    for item in iter_records(path, fmt=fmt, column_map=column_map, progress=progress):
        if stop_event is not None and stop_event.is_set():
            cancelled = True
            break
        total += 1
        if isinstance(item, RecordError):
            error(item)
            continue
        if encoder is None:
            valid += 1
            continue
        try:
            acc.add_record(encoder.encode_all(item))
            valid += 1
        except RecordRejected as exc:
            rejected += 1
            error(RecordError(exc.line, exc.reason))
    if cancelled:
        return StatsScan(acc.result(), fmt, total, valid, errors, dropped, cancelled)
    if policy == "strict" and errors:
        raise _strict_failure(path, errors, stopped=False)
    if valid == 0:
        if not errors:
            raise DatasetError(f"empty dataset: {path} has no records; expected {EXPECTED_SHAPES}")
        shown = "; ".join(f"line {e.line}: {e.reason}" for e in errors[:3])
        if rejected:
            raise DatasetError(f"no trainable tokens in any record of {path} ({len(errors) + dropped} invalid): "
                               f"{shown}; each record needs an assistant reply (or text) within max_seq_len "
                               f"{max_seq_len}")
        raise DatasetError(f"no valid records in {path} ({len(errors) + dropped} invalid): {shown}")
    return StatsScan(acc.result(), fmt, total, valid, errors, dropped, cancelled)


def record_preview(record: Record, width: int = 80) -> tuple[str, str, int]:
    """(kind, first user/text snippet, turns) for tables: one line per record, no rendering needed."""
    if isinstance(record, TextDoc):
        return "text", " ".join(record.text.split())[:width], 0
    first_user = next((m.content for m in record.messages if m.role == "user"), "")
    turns = sum(1 for m in record.messages if m.role == "assistant")
    return "chat", " ".join(first_user.split())[:width], turns


def as_jsonable(record: Record) -> dict[str, Any]:
    if isinstance(record, TextDoc):
        return {"line": record.line, "text": record.text}
    return {"line": record.line, "messages": record.as_dicts()}
