"""`llamaforge eval RUN`: the JSON shape of CLI.md (the same object as RUN/eval.json), the table, progress on
stderr, and one-line errors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from llamaforge_tui.cli import main
from llamaforge_tui.commands.eval import TerminalProgress, format_report
from llamaforge_tui.core.infer.eval_format import format_change, headline
from llamaforge_tui.core.infer.evaluate import EVAL_FILE, EvalProgress
from tests.fixtures.export_runs import make_run, write_chat_jsonl
from tests.fixtures.train_models import make_tiny_llama, one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
SIDE_KEYS = {"loss", "perplexity", "exact_match", "token_f1", "rouge_l"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Path:  # noqa: F811
    root = tmp_path_factory.mktemp("eval-cli")
    model = make_tiny_llama(root / "model")
    return make_run(root / "run", str(model), weights="gguf", data=write_chat_jsonl(root / "qa.jsonl"), scale=0.2)


def test_json_shape_and_record(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["eval", str(run_dir), "--limit", "2", "--samples", "1", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    doc = json.loads(captured.out)
    assert {"run", "split", "examples", "base", "tuned", "samples"} <= set(doc)
    assert doc["run"] == run_dir.name and doc["split"] == "train" and doc["examples"] == 4
    for side in ("base", "tuned"):
        assert SIDE_KEYS <= set(doc[side])
        assert all(isinstance(doc[side][k], float) for k in SIDE_KEYS)
    assert doc["base"]["loss"] != doc["tuned"]["loss"]  # the adapter is switched off for the base
    assert doc["generated"] == 2 and len(doc["samples"]) == 1
    assert {"prompt", "reference", "base", "tuned"} <= set(doc["samples"][0])
    assert doc["samples"][0]["prompt"] in {"What is the capital of France?", "Say hello to the world."}
    assert json.loads((run_dir / EVAL_FILE).read_text(encoding="utf-8")) == doc
    assert "eval 0:" in captured.err  # progress lines go to stderr, stdout holds only the JSON


def test_table(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(run_dir), "--limit", "1", "--general"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith(f"{run_dir.name}: training data (no eval split")
    header = next(line for line in lines if line.startswith("metric"))
    assert header.split() == ["metric", "base", "tuned", "change"]
    for label in ("loss", "perplexity", "exact match", "token F1", "ROUGE-L", "general loss"):
        assert any(line.startswith(label) for line in lines), label
    assert "general_sample.txt" in out and "where base and tuned differ most:" in out


@pytest.mark.parametrize(("argv", "message"), [
    (["--limit", "-1"], "--limit must be 0 or more, got -1"),
    (["--general", "/nonexistent/general.txt"], "general-text file /nonexistent/general.txt not found"),
])
def test_bad_options_are_one_line(run_dir: Path, argv: list[str], message: str,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(run_dir), *argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"error: {message}"


def test_no_such_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(tmp_path / "nope")]) == 1
    assert capsys.readouterr().err.startswith(f"error: no run at {tmp_path / 'nope'}")


def test_progress_is_throttled_per_phase() -> None:
    out = io.StringIO()
    progress = TerminalProgress(out, interval=60.0)
    for i in range(50):
        progress(EvalProgress("generate", i, 50, f"answering {i + 1}/50", elapsed=61.0))
    progress(EvalProgress("general", 0, 0, "encoding general.txt", elapsed=62.0))
    assert out.getvalue().splitlines() == ["eval 1:01  answering 1/50", "eval 1:02  encoding general.txt"]


def test_report_formatting() -> None:
    assert format_change(0.0, 0.875, "pct") == "+87.5 pts"
    assert format_change(100.0, 2.0, "ppl") == "x0.02"
    assert format_change(3.5, 0.5, "loss") == "-3.0000"
    assert headline(None) == "-"
    assert headline({"base": {"loss": 3.5, "exact_match": 0.0}, "tuned": {"loss": 0.5, "exact_match": 0.875}}) \
        == "EM 0→88%"
    assert headline({"base": {"loss": 3.5}, "tuned": {"loss": 0.5}}) == "3.50→0.50"
    data = {"run": "r", "path": "/runs/r", "split": "eval", "examples": 3, "generated": 0, "skipped": 0,
            "base": {"loss": 2.0, "perplexity": None}, "tuned": {"loss": 1.0, "perplexity": 2.718}, "samples": []}
    text = format_report(data)
    assert "held-out eval split" in text and "exact match" not in text  # nothing generated: no such rows
    assert [line.split()[0] for line in text.splitlines()[1:4]] == ["metric", "loss", "perplexity"]


@pytest.mark.parametrize("flag", ["--eval-at-end", "--no-eval-at-end", None])
def test_train_eval_at_end(flag: str | None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """On by default with an eval split; the summary is an event in events.jsonl and a line on the terminal."""
    from llamaforge_tui.core.train.events import EvalSummary, read_events

    model = make_tiny_llama(tmp_path / "model")
    data = write_chat_jsonl(tmp_path / "qa.jsonl")
    argv = ["train", "--model", str(model), "--data", str(data), "--steps", "2", "--eval-split", "0.25",
            "--save-every", "0", "--out", str(tmp_path / "run"), *([flag] if flag else [])]
    assert main(argv) == 0
    out = capsys.readouterr().out
    summaries = [e for e in read_events(tmp_path / "run") if isinstance(e, EvalSummary)]
    if flag == "--no-eval-at-end":
        assert summaries == [] and "eval at end" not in out
        return
    (summary,) = summaries
    assert summary.split == "eval" and summary.examples == 1 and summary.tokens > 0
    assert summary.base_loss != summary.tuned_loss
    line = next(line for line in out.splitlines() if line.startswith("eval at end"))
    assert f"loss {summary.base_loss:.4f} -> {summary.tuned_loss:.4f}" in line and "held-out eval split" in line


def test_eval_summary_event_round_trip() -> None:
    import math

    from llamaforge_tui.core.train.events import EvalSummary, event_from_dict

    event = EvalSummary(step=3, split="train", base_loss=800.0, tuned_loss=1.5, base_perplexity=math.inf,
                        tuned_perplexity=4.48, tokens=10, examples=2)
    back = event_from_dict(json.loads(event.to_json()))
    assert back == event
