"""Property tests: the dataset readers and records turn any file into records and record errors, or one
``DatasetError``; never another exception, a hang or a runaway allocation (invalid UTF-8, NUL bytes, BOMs,
deep nesting, huge lines and numbers, non-string contents, every shape mixed, FIFOs)."""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures.fuzz_inputs import dataset_input, dataset_record, deep_json
from llamaforge_tui.core.data.dataset import Conversation, detect_format, iter_records, load_dataset, scan_token_stats
from llamaforge_tui.core.data.readers import detect_container
from llamaforge_tui.core.data.records import RecordError
from llamaforge_tui.core.errors import DatasetError

FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])
CHAT = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
CAP = 65536  # a small record cap, so "huge lines" stay cheap to write


def read_or_refuse(path: Path) -> None:
    """What the Dataset pane and `llamaforge data` do with a file, and the promises they make."""
    start = time.monotonic()
    try:
        load = load_dataset(path, max_record_bytes=CAP)
        assert load.total == load.valid + load.invalid
        for item in iter_records(path, max_record_bytes=CAP):
            if isinstance(item, RecordError):
                item.reason.encode("utf-8")  # the `data` error reasons are always printable
                assert item.line >= 1 and len(item.reason) < 500
        scan_token_stats(path, None, None, max_seq_len=64)
    except DatasetError as exc:
        str(exc).encode("utf-8")
    assert time.monotonic() - start < 2


@FAST
@given(rng=st.randoms(use_true_random=False))
def test_any_dataset_file_reads_or_is_refused(tmp_path_factory: pytest.TempPathFactory, rng) -> None:
    data, suffix = dataset_input(rng)
    path = tmp_path_factory.mktemp("d") / f"data{suffix}"
    path.write_bytes(data)
    read_or_refuse(path)


@FAST
@given(raw=st.binary(max_size=300), suffix=st.sampled_from([".jsonl", ".json", ".csv", ".tsv", ".txt", ""]))
def test_random_bytes_read_or_are_refused(tmp_path_factory: pytest.TempPathFactory, raw: bytes, suffix: str) -> None:
    path = tmp_path_factory.mktemp("d") / f"data{suffix}"
    path.write_bytes(raw)
    read_or_refuse(path)


@FAST
@given(rng=st.randoms(use_true_random=False), n=st.integers(1, 8))
def test_every_shape_mixed_in_one_file(tmp_path_factory: pytest.TempPathFactory, rng, n: int) -> None:
    path = tmp_path_factory.mktemp("d") / "mixed.jsonl"
    path.write_text("\n".join(json.dumps(dataset_record(rng)) for _ in range(n)) + "\n" + json.dumps(CHAT),
                    encoding="utf-8")
    read_or_refuse(path)


@pytest.mark.parametrize("depth", [65, 1000, 100_000])
@pytest.mark.parametrize("container", ["jsonl", "json", "csv"])
def test_deep_nesting_is_one_record_error(tmp_path: Path, depth: int, container: str) -> None:
    nest = deep_json(depth)
    if container == "jsonl":
        path = tmp_path / "d.jsonl"
        path.write_text(json.dumps(CHAT) + '\n{"messages": ' + nest + "}\n", encoding="utf-8")
    elif container == "json":
        path = tmp_path / "d.json"
        path.write_text("[" + json.dumps(CHAT) + ', {"messages": ' + nest + "}]", encoding="utf-8")
    else:
        path = tmp_path / "d.csv"
        with path.open("w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows([["messages"], [json.dumps(CHAT["messages"])], [nest]])
    load = load_dataset(path)
    assert load.valid == 1 and load.invalid == 1
    assert "nested deeper than 64 levels" in load.errors[0].reason


def test_detect_container_survives_a_deeply_nested_first_line(tmp_path: Path) -> None:
    path = tmp_path / "d"
    path.write_text('{"a": ' + deep_json(100_000) + "}\n", encoding="utf-8")
    assert detect_container(path) == "json"


@pytest.mark.parametrize("container", ["jsonl", "json", "csv"])
def test_integers_past_4300_digits_are_record_errors(tmp_path: Path, container: str) -> None:
    huge = "7" * 5000
    path = tmp_path / f"d.{container}"
    bad = '{"messages": [{"role": "user", "content": ' + huge + '}, {"role": "assistant", "content": "x"}]}'
    if container == "jsonl":
        path.write_text(json.dumps(CHAT) + "\n" + bad + "\n", encoding="utf-8")
    elif container == "json":
        path.write_text("[" + json.dumps(CHAT) + "," + bad + "]", encoding="utf-8")
    else:
        path.write_text('messages\n"' + json.dumps(CHAT["messages"]).replace('"', '""') + '"\n"[' + huge + ']"\n',
                        encoding="utf-8")
    load = load_dataset(path)
    assert load.valid == 1 and load.invalid == 1
    assert "too long" in load.errors[0].reason


def test_a_csv_field_over_the_limit_is_a_record_error_even_in_the_header(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("instruction,output\n" + "a," + "b" * 200_000 + "\nq,a\n", encoding="utf-8")
    load = load_dataset(path, max_record_bytes=CAP)
    assert (load.valid, load.invalid) == (1, 1) and "over-long record" in load.errors[0].reason
    path.write_text('"' + "h" * 200_000 + '",output\nq,a\n', encoding="utf-8")
    with pytest.raises(DatasetError, match="header row cannot be read"):
        load_dataset(path, format="csv:alpaca", max_record_bytes=CAP)
    path.write_text('instruction,output\nq,a\n"' + "x\n" * 100_000 + '",a\n', encoding="utf-8")  # a huge quoted field
    items = list(iter_records(path, format="csv:alpaca", max_record_bytes=CAP))
    assert isinstance(items[0], Conversation) and "field larger than field limit" in items[1].reason


def test_the_records_array_is_found_by_structure_not_by_text(tmp_path: Path) -> None:
    """The finding: ``{"meta": {"data": [1]}, "data": [...]}`` was read from the nested ``data``."""
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"meta": {"data": [1]}, "data": [CHAT, CHAT]}, indent=1), encoding="utf-8")
    load = load_dataset(path)
    assert (load.format, load.valid, load.invalid) == ("chat", 2, 0)
    lines = path.read_text().splitlines()
    assert [r.line for r in load.records] == [i + 1 for i, line in enumerate(lines) if line == "  {"]
    path.write_text('{"data": [1],\n "data": [' + json.dumps(CHAT) + "]}", encoding="utf-8")  # the last one wins
    assert load_dataset(path).valid == 1


def test_a_role_with_a_lone_surrogate_gives_a_printable_reason(tmp_path: Path) -> None:
    """The finding: the error reason of a role holding a lone surrogate crashed `data`."""
    path = tmp_path / "d.jsonl"
    bad = {"messages": [{"role": "us\udcffer", "content": "x"}, {"role": "assistant", "content": "y"}]}
    path.write_text(json.dumps(CHAT) + "\n" + json.dumps(bad) + "\n", encoding="utf-8")
    (err,) = load_dataset(path).errors
    assert err.reason.encode("utf-8") and "us\\xffer" in err.reason
    raw = path.read_bytes().replace(b"\\udcff", b"\xff")  # the raw byte itself in a JSON array file
    (tmp_path / "d.json").write_bytes(b"[" + raw.replace(b"\n", b",", 1).rstrip(b"\n") + b"]")
    (err,) = load_dataset(tmp_path / "d.json").errors
    assert err.reason.encode("utf-8")


@pytest.mark.parametrize("value", [5, 1.5, None, True, {"a": 1}, [{"type": "image"}], "\x00", ""])
def test_non_string_contents_are_record_errors_or_text(tmp_path: Path, value) -> None:
    path = tmp_path / "d.jsonl"
    row = {"messages": [{"role": "user", "content": value}, {"role": "assistant", "content": "y"}]}
    path.write_text(json.dumps(CHAT) + "\n" + json.dumps(row) + "\n", encoding="utf-8")
    load = load_dataset(path)
    assert load.valid + load.invalid == 2
    if isinstance(value, (int, float)) and not isinstance(value, bool) or value == "\x00":
        assert load.valid == 2 and isinstance(load.records[1], Conversation)
    else:
        assert load.invalid == 1


def test_boms_nul_bytes_and_invalid_utf8_cost_one_record(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(CHAT).encode() + b"\n" + json.dumps(CHAT).encode()[:-3] + b"\xff\"}]}\n"
                     + json.dumps(CHAT).replace("Hello", "a\\u0000b").encode() + b"\n")
    load = load_dataset(path)
    assert (load.valid, load.invalid) == (2, 1) and "not valid UTF-8" in load.errors[0].reason
    path.write_bytes(json.dumps(CHAT).encode() + b"\n\x00\n")
    with pytest.raises(DatasetError, match="binary"):
        load_dataset(path)


def test_a_fifo_dataset_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "d.jsonl"
    os.mkfifo(fifo)
    start = time.monotonic()
    for fmt in (None, "jsonl", "json", "csv", "text:document"):
        with pytest.raises(DatasetError, match="not a regular file"):
            detect_format(fifo, fmt)
    assert time.monotonic() - start < 1


def test_a_folder_of_documents_skips_what_it_cannot_read(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("hello", encoding="utf-8")
    os.symlink("/dev/zero", tmp_path / "z.txt")
    load = load_dataset(tmp_path)
    assert load.valid == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_is_a_dataset_error(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(CHAT) + "\n", encoding="utf-8")
    path.chmod(0)
    with pytest.raises(DatasetError, match="cannot read"):
        load_dataset(path, format="jsonl:chat")


def test_a_read_error_during_the_scan_is_a_dataset_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llamaforge_tui.core.data import json_rows

    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(CHAT) + "\n", encoding="utf-8")

    def failing(*args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(json_rows, "open_regular", failing)
    with pytest.raises(DatasetError, match="Input/output error"):
        load_dataset(path, format="jsonl:chat")
