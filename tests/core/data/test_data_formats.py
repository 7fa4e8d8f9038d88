"""Each file container and record shape, and each kind of bad input, with line numbers and reasons."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llamaforge_tui.core.data.dataset import Conversation, Message, TextDoc, detect_format, iter_records, load_dataset
from llamaforge_tui.core.errors import DatasetError

CHAT = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                     {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"},
                     {"role": "assistant", "content": "Goodbye."}]}


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_chat_jsonl_multi_turn(tmp_path: Path) -> None:
    loaded = load_dataset(write_jsonl(tmp_path / "d.jsonl", [CHAT, CHAT]))
    assert (loaded.format, loaded.container, loaded.total) == ("chat", "jsonl", 2)
    assert loaded.records[1] == Conversation((Message("system", "Be brief."), Message("user", "Hi"),
                                              Message("assistant", "Hello!"), Message("user", "Bye"),
                                              Message("assistant", "Goodbye.")), line=2)


def test_openai_content_parts_are_joined(tmp_path: Path) -> None:
    row = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "you"}]},
                        {"role": "assistant", "content": "Hey"}]}
    rec = load_dataset(write_jsonl(tmp_path / "d.jsonl", [row])).records[0]
    assert isinstance(rec, Conversation) and rec.messages[0].content == "Hi you"


def test_sharegpt(tmp_path: Path) -> None:
    row = {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"},
                             {"from": "gpt", "value": "A"}]}
    loaded = load_dataset(write_jsonl(tmp_path / "d.jsonl", [row, {"conversations": [{"from": "robot", "value": "x"}]}]))
    assert loaded.format == "sharegpt"
    assert [m.role for m in loaded.records[0].messages] == ["system", "user", "assistant"]
    assert loaded.errors[0].line == 2 and "unknown role 'robot'" in loaded.errors[0].reason


def test_alpaca_with_input_and_system(tmp_path: Path) -> None:
    rows = [{"instruction": "Add", "input": "2 and 2", "output": "4", "system": "Math bot."},
            {"instruction": "Greet", "input": "", "output": "Hi"}]
    loaded = load_dataset(write_jsonl(tmp_path / "a.jsonl", rows))
    assert loaded.format == "alpaca"
    assert loaded.records[0].messages == (Message("system", "Math bot."), Message("user", "Add\n\n2 and 2"),
                                          Message("assistant", "4"))
    assert loaded.records[1].messages == (Message("user", "Greet"), Message("assistant", "Hi"))


def test_prompt_completion(tmp_path: Path) -> None:
    loaded = load_dataset(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "2+2=", "completion": "4"}]))
    assert loaded.format == "prompt_completion"
    assert loaded.records[0].messages == (Message("user", "2+2="), Message("assistant", "4"))


def test_json_array_reports_item_lines(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text('[\n  {"prompt": "a", "completion": "b"},\n  {"prompt": "", "completion": "c"},\n'
                    '  {"prompt": "d", "completion": "e"}\n]\n', encoding="utf-8")
    loaded = load_dataset(path)
    assert (loaded.container, loaded.format, loaded.total) == ("json", "prompt_completion", 3)
    assert [r.line for r in loaded.records] == [2, 4]
    assert loaded.errors[0].line == 3 and "empty content in 'prompt'" in loaded.errors[0].reason


def test_json_object_holding_an_array(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"version": 1, "data": [CHAT, CHAT]}, indent=1), encoding="utf-8")
    loaded = load_dataset(path)
    assert (loaded.container, loaded.format, len(loaded.records)) == ("json", "chat", 2)
    assert loaded.records[0].line > 1


def test_csv_with_column_map_and_row_numbers(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('question,answer\n"What is 2+2?",4\n"Multi\nline question","yes"\nonly-one-field\n', encoding="utf-8")
    with pytest.raises(DatasetError, match="cannot detect.*question, answer.*--column"):
        load_dataset(path)
    loaded = load_dataset(path, format="alpaca", column_map={"instruction": "question", "output": "answer"})
    assert loaded.container == "csv" and len(loaded.records) == 2
    assert loaded.records[1].messages[0].content == "Multi\nline question" and loaded.records[1].line == 3
    assert loaded.errors[0].line == 5 and "1 fields, the header has 2" in loaded.errors[0].reason


def test_tsv_text_column(tmp_path: Path) -> None:
    path = tmp_path / "d.tsv"
    path.write_text("id\ttext\n1\tFirst document.\n2\tSecond one.\n", encoding="utf-8")
    loaded = load_dataset(path)
    assert (loaded.container, loaded.format) == ("tsv", "text")
    assert loaded.records == [TextDoc("First document.", 2), TextDoc("Second one.", 3)]


def test_plain_text_paragraphs_and_whole_document(tmp_path: Path) -> None:
    path = tmp_path / "book.txt"
    path.write_text("Para one\nstill one.\n\n\nPara two.\n", encoding="utf-8")
    loaded = load_dataset(path)
    assert loaded.records == [TextDoc("Para one\nstill one.", 1), TextDoc("Para two.", 5)]
    whole = load_dataset(path, format="text:document")
    assert whole.format == "document" and len(whole.records) == 1 and "Para two." in whole.records[0].text


def test_folder_of_text_files_one_document_each(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("Alpha.\n\nMore alpha.", encoding="utf-8")
    (tmp_path / "docs" / "b.md").write_text("Beta.", encoding="utf-8")
    (tmp_path / "docs" / "c.txt").write_bytes(b"bad \xff byte")
    loaded = load_dataset(tmp_path / "docs")
    assert (loaded.container, loaded.format) == ("textdir", "document")
    assert [r.text for r in loaded.records] == ["Alpha.\n\nMore alpha.", "Beta."]
    assert "not valid UTF-8" in loaded.errors[0].reason and "c.txt" in loaded.errors[0].reason


def test_format_override_and_unknown_format(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.data", [{"text": "hello"}])
    assert str(detect_format(path)) == "text (jsonl)"
    assert detect_format(path, "jsonl:text").shape == "text"
    with pytest.raises(DatasetError, match="unknown dataset format 'yaml'"):
        detect_format(path, "yaml")


@pytest.mark.parametrize(("row", "reason"), [
    ('{"messages": [{"role": "user", "content": "hi"}', "malformed JSON"),
    ('[1, 2]', "expected a JSON object, got list"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "ends with a 'user' message"),
    ({"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}, "message 1 (user) is missing field 'content'"),
    ({"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "x"}]}, "empty content in message 1"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "wizard", "content": "x"}]}, "unknown role 'wizard'"),
    ({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "x"}]}, "roles out of order: message 1"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                   {"role": "assistant", "content": "c"}]}, "message 2 is 'user' after 'user'"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"},
                   {"role": "assistant", "content": "c"}]}, "only allowed as the first message"),
    ({"messages": "hello"}, "'messages' must be a list"),
    ({"messages": [{"role": "user", "content": 3.5j if False else {"x": 1}}, {"role": "assistant", "content": "c"}]},
     "must be a string, not dict"),
    ({"instruction": "x"}, None),  # no output: another shape -> 'missing field'
])
def test_bad_chat_records_have_specific_reasons(tmp_path: Path, row: object, reason: str | None) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [CHAT, row, CHAT])
    loaded = load_dataset(path)
    assert len(loaded.records) == 2 and [r.line for r in loaded.records] == [1, 3]  # good lines survive
    assert len(loaded.errors) == 1 and loaded.errors[0].line == 2
    assert (reason or "missing field 'messages'") in loaded.errors[0].reason


def test_alpaca_missing_field(tmp_path: Path) -> None:
    loaded = load_dataset(write_jsonl(tmp_path / "a.jsonl", [{"instruction": "a", "output": "b"}, {"instruction": "c"}]))
    assert loaded.errors[0].line == 2 and "missing field 'output'" in loaded.errors[0].reason


def test_non_utf8_bytes_cost_one_record(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    good = json.dumps(CHAT).encode()
    path.write_bytes(good + b"\n" + b'{"text": "caf\xe9"}\n' + good + b"\n")
    loaded = load_dataset(path)
    assert len(loaded.records) == 2
    assert loaded.errors[0].line == 2 and "not valid UTF-8: byte 0xe9" in loaded.errors[0].reason


def test_non_utf8_in_csv_row(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b"prompt,completion\nok,fine\nbad \xff,x\n")
    loaded = load_dataset(path)
    assert len(loaded.records) == 1 and loaded.errors[0].line == 3 and "non-UTF-8" in loaded.errors[0].reason


def test_over_long_line_is_rejected_without_reading_it_whole(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    big = json.dumps({"text": "x" * 5000})
    path.write_text(f'{{"text": "short"}}\n{big}\n{{"text": "after"}}\n', encoding="utf-8")
    loaded = load_dataset(path, max_record_bytes=1000)
    assert [r.text for r in loaded.records] == ["short", "after"]
    assert loaded.errors[0].line == 2 and "over-long record" in loaded.errors[0].reason


def test_strict_policy_fails_listing_the_first_errors(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [CHAT, "oops", CHAT, {"messages": []}])
    with pytest.raises(DatasetError, match=r"2 invalid record\(s\).*line 2: malformed JSON.*line 4: empty conversation"):
        load_dataset(path, policy="strict")
    assert load_dataset(path, policy="skip").invalid == 2
    with pytest.raises(DatasetError, match="unknown policy"):
        load_dataset(path, policy="lenient")


def test_empty_and_undetectable_and_all_bad(tmp_path: Path) -> None:
    empty = tmp_path / "e.jsonl"
    empty.write_text("")
    with pytest.raises(DatasetError, match="empty dataset.*expected.*'messages'"):
        load_dataset(empty)
    blank = tmp_path / "b.jsonl"
    blank.write_text("\n\n")
    with pytest.raises(DatasetError, match="empty dataset"):
        load_dataset(blank)
    odd = write_jsonl(tmp_path / "o.jsonl", [{"foo": 1, "bar": 2}])
    with pytest.raises(DatasetError, match="cannot detect the record format.*foo, bar.*expected"):
        load_dataset(odd)
    bad = write_jsonl(tmp_path / "x.jsonl", ["nope", "{"])
    with pytest.raises(DatasetError, match="no valid records.*line 1: malformed JSON"):
        load_dataset(bad)
    with pytest.raises(DatasetError, match="not found"):
        load_dataset(tmp_path / "missing.jsonl")
    parquet = tmp_path / "d.parquet"
    parquet.write_bytes(b"PAR1")
    with pytest.raises(DatasetError, match="Parquet is not supported"):
        load_dataset(parquet)


def test_limit_reads_only_the_first_records(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [CHAT] * 50)
    loaded = load_dataset(path, limit=10)
    assert len(loaded.records) == 10 and not loaded.complete
    items = list(iter_records(path, limit=3))
    assert [i.line for i in items] == [1, 2, 3]


def test_json_array_bad_bytes_and_single_record_object(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_bytes(b'[{"prompt": "ok", "completion": "fine"},\n {"prompt": "caf\xe9", "completion": "x"}]')
    loaded = load_dataset(path)
    assert len(loaded.records) == 1 and loaded.errors[0].line == 2 and "non-UTF-8" in loaded.errors[0].reason
    single = tmp_path / "one.json"
    single.write_text(json.dumps(CHAT, indent=2), encoding="utf-8")
    assert load_dataset(single).records[0].messages[-1].content == "Goodbye."
