"""Pilot tests of the Dataset pane: load a file, records table, rendering with the selected model, stats, errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fixtures.data_tokenizers import make_tokenizer
from textual.widgets import DataTable, Input, Static

from llamaforge_tui.core.data.chat_templates import resolve_chat_template
from llamaforge_tui.core.model.render_context import RenderContext
from llamaforge_tui.core.errors import SourceError
from llamaforge_tui.core.data.template_check import check_against_ollama
from llamaforge_tui.core.settings import Settings
from llamaforge_tui.tui.app import Services, make_app
from llamaforge_tui.tui.widgets.dataset_pane import DatasetPane
from llamaforge_tui.tui.widgets.dataset_view import complete_path


class FakeOllamaModel:
    full_name = "gemma3:270m"

    def read_layer_text(self, kind: str) -> str | None:
        return None


def fake_loader(calls: list[Any]):  # noqa: ANN201
    def load(model: Any, settings: Any, *, template_override: str | None = None) -> RenderContext:
        calls.append(model)
        source = model if isinstance(model, str) else f"ollama:{model.full_name}"
        if "broken" in source:
            raise SourceError(f"unknown model source {source!r}")
        family = "chatml" if "qwen" in source else "gemma"
        tok = make_tokenizer(family)
        choice = resolve_chat_template(tok, None, override=template_override)
        ollama = "{{ range .Messages }}{{ .Content }}{{ end }}" if family == "chatml" else None
        check = check_against_ollama(tok, choice, ollama)
        return RenderContext(source, tok, choice, None, check, [w for w in (check.warning,) if w])
    return load


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    rows = [{"messages": [{"role": "user", "content": "What is [bold]markup[/]?"},
                          {"role": "assistant", "content": "Plain text [red]stays[/red] plain."}]},
            "{not json",
            {"messages": [{"role": "user", "content": "Hello there!"}, {"role": "assistant", "content": "Hi."},
                          {"role": "user", "content": "Reset?"}, {"role": "assistant", "content": "Hold the button."}]}]
    path = tmp_path / "chat.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


async def wait_dataset_workers(pilot: Any) -> None:
    """Wait for the pane's workers only (the Train pane may run endless pollers)."""
    for _ in range(600):  # up to ~30 s on a loaded machine
        await pilot.pause()
        busy = [w for w in pilot.app.workers if (w.group or "").startswith("dataset") and not w.is_finished]
        if not busy:
            await pilot.pause()
            return
        await pilot.pause(0.05)
    raise AssertionError("dataset workers did not finish")


def text_of(pilot: Any, selector: str) -> str:
    return str(pilot.app.query_one(selector, Static).render())


async def test_load_render_with_selected_model_stats_and_errors(dataset: Path) -> None:
    calls: list[Any] = []
    app = make_app(Settings(), Services(extra={"render_context_loader": fake_loader(calls)}))
    messages: list[Any] = []
    async with app.run_test(size=(140, 44), message_hook=messages.append) as pilot:
        await pilot.pause()  # let the app's initial focus settle before switching panes
        await pilot.press("3")
        await pilot.pause()
        pane = app.query_one(DatasetPane)
        assert app.focused is app.query_one("#dataset-records", DataTable)
        await pilot.press("o")
        assert app.focused is app.query_one("#dataset-path", Input)
        app.query_one("#dataset-path", Input).value = str(dataset)
        await pilot.press("enter")
        await wait_dataset_workers(pilot)
        table = app.query_one("#dataset-records", DataTable)
        assert table.row_count == 2
        assert app.selected_dataset == str(dataset)
        assert any(isinstance(m, DatasetPane.DatasetSelected) and m.path == str(dataset) for m in messages)
        errors = app.query_one("#dataset-errors", DataTable)
        assert errors.row_count == 1 and str(errors.get_row_at(0)[0]) == "2"
        assert "malformed JSON" in str(errors.get_row_at(0)[1])
        assert "chat (jsonl)" in text_of(pilot, "#dataset-summary")
        raw = text_of(pilot, "#dataset-render")
        assert "What is [bold]markup[/]?" in raw and "raw record" in raw  # shown literally, no markup parsing
        assert "token stats need a model" in text_of(pilot, "#dataset-stats")

        app.selected_model = FakeOllamaModel()  # chosen in the Models pane
        await wait_dataset_workers(pilot)
        assert calls and isinstance(calls[-1], FakeOllamaModel)
        summary = text_of(pilot, "#dataset-summary")
        assert "ollama:gemma3:270m" in summary and "template gemma" in summary
        rendered = app.query_one("#dataset-render", Static).render()
        assert "<start_of_turn>model\nPlain text [red]stays[/red] plain.<end_of_turn>" in str(rendered)
        trained = [str(rendered)[s.start:s.end] for s in rendered.spans if "success" in str(s.style)]
        assert trained == ["Plain text [red]stays[/red] plain.<end_of_turn>"]
        assert any(isinstance(m, DatasetPane.ScanProgress) for m in messages)  # the full pass reports progress
        stats = text_of(pilot, "#dataset-stats")
        assert "3 records · 2 valid · 1 invalid" in stats and "median" in stats and "steps/epoch: 2 at batch 1" in stats

        table.focus()
        await pilot.press("down")
        rendered = app.query_one("#dataset-render", Static).render()
        trained = [str(rendered)[s.start:s.end] for s in rendered.spans if "success" in str(s.style)]
        assert trained == ["Hi.<end_of_turn>", "Hold the button.<end_of_turn>"]  # multi-turn: both replies
        assert pane.selected_record().line == 3


async def test_typed_source_overrides_selection_and_errors_are_reported(dataset: Path, tmp_path: Path) -> None:
    calls: list[Any] = []
    app = make_app(Settings(), Services(extra={"render_context_loader": fake_loader(calls)}))
    async with app.run_test(size=(140, 44)) as pilot:
        await pilot.press("3")
        pane = app.query_one(DatasetPane)
        pane.query_one("#dataset-model", Input).value = "ollama:qwen2.5:0.5b"
        pane.query_one("#dataset-model", Input).focus()
        await pilot.press("enter")
        pane.open_dataset(str(dataset))
        await wait_dataset_workers(pilot)
        assert calls == ["ollama:qwen2.5:0.5b"]
        assert "<|im_start|>assistant\n" in text_of(pilot, "#dataset-render")
        assert "warning: the chatml template and Ollama's TEMPLATE differ" in text_of(pilot, "#dataset-summary")
        app.selected_model = FakeOllamaModel()  # ignored while a source is typed
        await wait_dataset_workers(pilot)
        assert calls == ["ollama:qwen2.5:0.5b"]

        pane.query_one("#dataset-template", Input).value = "gemma"  # template override, same model
        pane.query_one("#dataset-template", Input).focus()
        await pilot.press("enter")
        await wait_dataset_workers(pilot)
        assert "<start_of_turn>model\n" in text_of(pilot, "#dataset-render")
        assert "template gemma (override" in text_of(pilot, "#dataset-summary")
        pane.query_one("#dataset-template", Input).value = ""

        pane.query_one("#dataset-model", Input).value = "broken-source"
        pane.query_one("#dataset-model", Input).focus()
        await pilot.press("enter")
        await wait_dataset_workers(pilot)
        assert pane.context is None and "raw record" in text_of(pilot, "#dataset-render")

        missing = tmp_path / "nope.jsonl"
        pane.open_dataset(str(missing))
        await wait_dataset_workers(pilot)
        assert "error: dataset not found" in text_of(pilot, "#dataset-summary")
        assert app.query_one("#dataset-records", DataTable).row_count == 0


def test_path_completion(tmp_path: Path) -> None:
    (tmp_path / "chat_example.jsonl").write_text("{}")
    (tmp_path / "data").mkdir()
    assert complete_path(str(tmp_path / "chat_")) == str(tmp_path / "chat_example.jsonl")
    assert complete_path(str(tmp_path / "da")) == str(tmp_path / "data") + "/"
    assert complete_path(str(tmp_path / "zzz")) is None
