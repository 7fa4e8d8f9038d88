"""Token statistics, the seeded split, steps per epoch, prepare_dataset, and streaming with flat memory."""

from __future__ import annotations

import json
import threading
import time
import tracemalloc
from pathlib import Path

import pytest
from fixtures.data_tokenizers import make_tokenizer

from llamaforge_tui.core.data.dataset import (
    Example,
    iter_records,
    load_dataset,
    prepare_dataset,
    resolve_chat_template,
    scan_token_stats,
    steps_per_epoch,
    token_stats,
)
from llamaforge_tui.core.data.dataset import split_indices
from llamaforge_tui.core.errors import DatasetError


def ex(n: int, trainable: int, cut: int | None = None) -> Example:
    ids = list(range(n))[: cut or n]
    labels = [-100] * (len(ids) - min(trainable, len(ids))) + ids[len(ids) - min(trainable, len(ids)):]
    return Example(ids, labels, 1, n, cut is not None and n > cut)


def test_token_stats_percentiles_and_truncation() -> None:
    examples = [ex(n, 2) for n in range(1, 21)] + [ex(100, 5, cut=50)]
    stats = token_stats(examples, max_seq_len=50)
    assert (stats.min, stats.median, stats.p95, stats.max) == (1, 11, 20, 100)
    assert stats.over_max_seq_len == 1 and stats.examples == 21
    assert stats.total_trainable == 1 + 19 * 2 + 5
    assert stats.to_dict()["over_max_seq_len"] == 1


def test_steps_per_epoch() -> None:
    assert steps_per_epoch(100, 4, 2) == 13
    assert steps_per_epoch(8, 4, 2) == 1
    assert steps_per_epoch(0, 1) == 0
    with pytest.raises(DatasetError):
        steps_per_epoch(10, 0)


def test_split_is_seeded_and_disjoint() -> None:
    a = split_indices(100, 0.1, seed=3)
    assert a == split_indices(100, 0.1, seed=3) and a != split_indices(100, 0.1, seed=4)
    train, evals = a
    assert len(evals) == 10 and len(train) == 90 and not set(train) & set(evals)
    assert split_indices(1, 0.5, 0) == ([0], [])
    assert split_indices(3, 0.01, 0)[1] != []  # a small split still gets one example
    with pytest.raises(DatasetError, match="eval split"):
        split_indices(10, 1.0, 0)


def _chat_rows(n: int, words: int = 6) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"Question {i}: " + "hello " * (i % 7)},
                          {"role": "assistant", "content": "The capital of France is Paris. " * (1 + i % words)}]}
            for i in range(n)]


def test_prepare_dataset_end_to_end(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    rows = [json.dumps(r) for r in _chat_rows(40)]
    rows.insert(5, "{broken")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    tok = make_tokenizer("chatml")
    prepared = prepare_dataset(path, tok, resolve_chat_template(tok, "qwen2"), max_seq_len=48, eval_split=0.2, seed=1)
    assert (len(prepared.train), len(prepared.eval)) == (32, 8)
    assert prepared.errors[0].line == 6 and prepared.template_name == "chatml" and prepared.format == "chat"
    assert prepared.stats.examples == 40 and prepared.stats.over_max_seq_len > 0
    assert all(len(e.input_ids) <= 48 for e in prepared.train + prepared.eval)
    assert prepared.stats.total_trainable == sum(e.trainable for e in prepared.train + prepared.eval)
    assert prepared.warnings[0].startswith("1 invalid record(s) skipped (first: line 6: malformed JSON")
    assert f"{prepared.stats.over_max_seq_len} conversation(s) longer than max_seq_len 48" in prepared.warnings[1]
    again = prepare_dataset(path, tok, resolve_chat_template(tok, "qwen2"), max_seq_len=48, eval_split=0.2, seed=1)
    assert [e.line for e in again.eval] == [e.line for e in prepared.eval]
    with pytest.raises(DatasetError, match="policy strict"):
        prepare_dataset(path, tok, None, max_seq_len=48, policy="strict")


def test_prompt_longer_than_max_seq_len_is_reported_and_nothing_trainable_fails(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    long_prompt = {"messages": [{"role": "user", "content": "hello " * 200}, {"role": "assistant", "content": "ok"}]}
    path.write_text(json.dumps(long_prompt) + "\n" + json.dumps(_chat_rows(1)[0]) + "\n", encoding="utf-8")
    tok = make_tokenizer("chatml")
    prepared = prepare_dataset(path, tok, None, max_seq_len=64)
    assert len(prepared.train) == 1 and prepared.errors[0].line == 1 and "over-long record" in prepared.errors[0].reason
    path.write_text(json.dumps(long_prompt) + "\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="no trainable tokens"):
        prepare_dataset(path, tok, None, max_seq_len=64)


def _write_big(path: Path, n: int) -> int:
    row = json.dumps({"text": "The Acme Kettle boils water in three minutes. " * 40}) + "\n"
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(row if i % 97 else "{not json\n")
    return path.stat().st_size


def test_streaming_scan_memory_does_not_grow_with_file_size(tmp_path: Path) -> None:
    """Validation pass over 4x more data must not use more memory: nothing accumulates per record."""
    peaks = {}
    for n in (3000, 12000):
        path = tmp_path / f"big{n}.jsonl"
        size = _write_big(path, n)
        tracemalloc.start()
        scan = scan_token_stats(path, None, None, max_seq_len=256)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert scan.total == n and scan.valid == n - len(range(0, n, 97)) and len(scan.errors) == n - scan.valid
        assert peaks[n] < size / 20, (peaks[n], size)  # far below the file size
    assert peaks[12000] < peaks[3000] * 1.5 + 200_000, peaks


def test_streaming_token_stats_match_the_in_memory_ones_and_cancel(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _chat_rows(60)), encoding="utf-8")
    tok = make_tokenizer("gemma")
    choice = resolve_chat_template(tok, "gemma3")
    seen: list[tuple[int, int]] = []
    scan = scan_token_stats(path, tok, choice, max_seq_len=72, progress=lambda d, t: seen.append((d, t)))
    prepared = prepare_dataset(path, tok, choice, max_seq_len=72)
    assert scan.stats == prepared.stats and scan.valid == 60
    assert seen[-1][0] == seen[-1][1] == path.stat().st_size
    stop = threading.Event()
    stop.set()
    assert scan_token_stats(path, tok, choice, max_seq_len=72, stop_event=stop).cancelled


def test_preview_of_a_big_file_reads_only_its_head(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    _write_big(path, 12000)  # ~22 MB
    t0 = time.perf_counter()
    loaded = load_dataset(path, limit=100)
    preview = time.perf_counter() - t0
    assert loaded.total == 100 and not loaded.complete
    t0 = time.perf_counter()
    assert sum(1 for _ in iter_records(path)) == 12000
    full = time.perf_counter() - t0
    assert preview * 10 < full, (preview, full)  # the preview cost does not grow with the file


def test_long_text_documents_are_split_not_truncated(tmp_path: Path) -> None:
    path = tmp_path / "book.txt"
    path.write_text(("The Acme Kettle boils water in three minutes. " * 30) + "\n\nShort paragraph.\n", encoding="utf-8")
    tok = make_tokenizer("llama3")
    prepared = prepare_dataset(path, tok, None, max_seq_len=32)
    pieces = [e for e in prepared.train if e.line == 1]
    assert len(pieces) > 3 and [e.chunk for e in pieces] == list(range(len(pieces)))
    assert all(len(e.input_ids) <= 32 and not e.truncated for e in pieces)
    whole = sum((e.input_ids for e in pieces), [])
    assert whole[0] == tok.bos_token_id and whole[-1] == tok.eos_token_id and len(whole) == pieces[0].length
    stats = prepared.stats
    assert (stats.records, stats.examples, stats.split_documents, stats.over_max_seq_len) == (2, len(pieces) + 1, 1, 1)
    assert stats.max == pieces[0].length
    scan = scan_token_stats(path, tok, None, max_seq_len=32)
    assert scan.stats == stats


def test_stats_accumulator_keeps_a_histogram_not_the_examples() -> None:
    from llamaforge_tui.core.data.encode import StatsAccumulator

    acc = StatsAccumulator(max_seq_len=64)
    for i in range(100_000):
        acc.add(Example([1, 2], [-100, 2], i, 10 + i % 50, False))
    assert len(acc.lengths) == 50  # memory grows with distinct lengths, not with records
    stats = acc.result()
    assert (stats.records, stats.min, stats.max, stats.median, stats.total_trainable) == (100_000, 10, 59, 34, 100_000)
