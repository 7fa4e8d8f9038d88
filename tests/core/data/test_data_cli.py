"""`llamaforge data`: text and JSON output, exit codes, strict failures; an offline tokenizer stands in for --model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures.data_tokenizers import make_tokenizer

from llamaforge_tui.cli import main
from llamaforge_tui.commands import data as data_cmd
from llamaforge_tui.core.data.chat_templates import resolve_chat_template
from llamaforge_tui.core.model.render_context import RenderContext
from llamaforge_tui.core.data.template_check import check_against_ollama

OLLAMA_GEMMA = ('{{- range $i, $_ := .Messages }}{{- $last := eq (len (slice $.Messages $i)) 1 }}'
                '{{- if eq .Role "user" }}<start_of_turn>user\n{{ .Content }}<end_of_turn>\n'
                '{{ else if eq .Role "assistant" }}<start_of_turn>model\n{{ .Content }}<end_of_turn>\n{{ end }}'
                '{{- if $last }}<start_of_turn>model\n{{ end }}{{- end }}')


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    rows = [{"instruction": "Say hi", "output": "Hello there!"},
            {"instruction": "Capital of France?", "output": "The capital of France is Paris."},
            "{oops",
            {"instruction": "Reset?", "output": "Hold the power button for ten seconds. " * 30}]
    path = tmp_path / "a.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture()
def fake_model(monkeypatch: pytest.MonkeyPatch) -> None:
    def load(source: str, args: object) -> RenderContext:
        tok = make_tokenizer("gemma")
        choice = resolve_chat_template(tok, "gemma3", override=getattr(args, "template", None))
        check = check_against_ollama(tok, choice, OLLAMA_GEMMA)
        return RenderContext(source, tok, choice, "gemma3", check, [w for w in (check.warning,) if w])

    monkeypatch.setattr(data_cmd, "load_context", load)


def test_json_output_with_model(dataset: Path, fake_model: None, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["data", str(dataset), "--model", "ollama:gemma3:270m", "--max-seq-len", "64", "--json",
               "--batch-size", "2", "--grad-accum", "1"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert (out["format"], out["records"], out["valid"], out["invalid"]) == ("alpaca", 4, 3, 1)
    assert out["errors"] == [{"line": 3, "reason": "malformed JSON: Expecting property name enclosed in double "
                                                   "quotes at column 2"}]
    stats = out["token_stats"]
    assert set(stats) >= {"min", "median", "p95", "max", "over_max_seq_len", "total_trainable"}
    assert stats["over_max_seq_len"] == 1 and stats["max"] > 64 and stats["total_trainable"] > 0
    assert out["steps_per_epoch"] == 2
    assert out["model"]["template"]["name"] == "gemma"
    assert out["model"]["ollama_template_check"]["status"] == "differ"  # no system turn folding, trailing text
    first = out["first_example"]
    assert [s["text"] for s in first["spans"] if s["trained"]] == ["Hello there!<end_of_turn>"]
    assert first["rendered"].startswith("<bos><start_of_turn>user\nSay hi<end_of_turn>")


def test_text_output_marks_trained_spans(dataset: Path, fake_model: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", str(dataset), "--model", "x.gguf", "--template", "chatml"]) == 0
    out = capsys.readouterr().out
    assert "format    alpaca (jsonl)" in out and "records   4 (3 valid, 1 invalid)" in out
    assert "template  chatml (override" in out
    assert "«Hello there!<|im_end|>\n»" in out  # <|im_end|> is not a special token here: newline kept
    assert "line 3: malformed JSON" in out and "steps     3 per epoch" in out


def test_without_model_lists_records_and_errors(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", str(dataset), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["token_stats"] is None and out["first_example"]["messages"][0] == {"role": "user", "content": "Say hi"}


def test_strict_and_bad_input_exit_non_zero(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "e.jsonl"
    empty.write_text("")
    assert main(["data", str(empty)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: empty dataset") and "Traceback" not in err
    assert main(["data", str(dataset), "--column", "nonsense"]) == 1
    assert "FIELD=COLUMN" in capsys.readouterr().err


def test_strict_error_message(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", str(dataset), "--policy", "strict"]) == 1
    err = capsys.readouterr().err
    assert "1 invalid record(s)" in err and "line 3: malformed JSON" in err and "policy strict" in err


def test_csv_with_column_map(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "qa.csv"
    path.write_text("question,answer\nWhat is 2+2?,4\n", encoding="utf-8")
    assert main(["data", str(path), "--format", "csv:alpaca", "--column", "instruction=question",
                 "--column", "output=answer", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["container"] == "csv" and out["valid"] == 1
