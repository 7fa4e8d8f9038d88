"""The screens at 80x24, 120x40 and 200x60, as text: every column shows (long names shrink with an ellipsis,
numbers keep their units), and the Train form folds away while a run trains (c brings it back)."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest
from textual.widgets import DataTable

from llamaforge_tui.core.settings import Settings
from llamaforge_tui.tui.app import Services, make_app
from llamaforge_tui.tui.widgets.run_form import RunForm
from llamaforge_tui.tui.widgets.table_fit import fit_widths
from tests.fixtures.hf_cache_factory import build_realistic_cache
from tests.fixtures.ollama_store import build_fixture_store
from tests.tui.train_helpers import FakeTrainer, screen_text, show_train, wait_for

SIZES = [(80, 24), (120, 40), (200, 60)]
LONG_NAME = "hf.co/bartowski/SmolLM2-135M-Instruct-GGUF:Q8_0"


def _header(text: str, first: str) -> str:
    """The table's header line: the one that starts with the first column's title."""
    return next((line for line in text.splitlines() if line.lstrip().startswith(first + " ")), "")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("layout")
    return build_fixture_store(base / "models", base / "work", None).root


def test_fit_widths_shrinks_only_the_long_text_columns() -> None:
    natural, shrinkable = [48, 12, 6, 9, 43], [True, False, False, False, True]
    assert fit_widths(natural, shrinkable, 200) == natural  # room: nothing changes
    fitted = fit_widths(natural, shrinkable, 70)
    assert fitted[1:4] == [12, 6, 9] and sum(fitted) + 2 * len(fitted) <= 70
    assert fitted[0] >= 8 and fitted[4] >= 8
    assert fit_widths(natural, shrinkable, 10)[1:4] == [12, 6, 9]  # never below the fixed columns


@pytest.mark.parametrize("size", SIZES)
async def test_models_table_shows_every_column_with_units(store: Path, size: tuple[int, int]) -> None:
    app = make_app(Settings(models_dirs=[str(store)]), Services())
    async with app.run_test(size=size) as pilot:
        table = app.query_one("#models-table", DataTable)
        await wait_for(pilot, lambda: table.row_count == 14, what="the store scanned")
        await wait_for(pilot, lambda: "HF base" in _header(screen_text(app), "Name"), what="the columns fitted")
        text = screen_text(app)
        header = _header(text, "Name")
        for title in ("Name", "Status", "Arch", "Quant", "Params", "Size", "HF base"):
            assert title in header, (size, header)
        assert "84.99 kB" in text  # a size keeps its unit
        if size[0] >= 200:
            assert LONG_NAME in text  # room enough: nothing shrinks
        else:
            assert "…" in text and re.search(r"alice/ti\S*", text)  # shrunk with an ellipsis, still readable


@pytest.mark.parametrize("size", SIZES)
async def test_cache_header_counts_corrupt_repos_and_the_size_column_shows(tmp_path: Path,
                                                                       size: tuple[int, int]) -> None:
    cache = build_realistic_cache(tmp_path / "hub")
    app = make_app(Settings(hf_cache_dir=str(cache.root)), Services())
    async with app.run_test(size=size) as pilot:
        await pilot.press("2")
        table = app.query_one("#cache-table", DataTable)
        await wait_for(pilot, lambda: table.row_count == 5, what="the cache scanned")
        await wait_for(pilot, lambda: "Complete" in screen_text(app), what="the columns fitted")
        text = screen_text(app)
        assert "(1 corrupt)" in text
        header = next(line for line in text.splitlines() if "Repo" in line and "Type" in line)
        assert "Size" in header and "Complete" in header, (size, header)
        assert "120.24 kB" in text


@pytest.mark.parametrize("size", SIZES)
async def test_train_form_folds_away_while_a_run_trains_and_comes_back_on_c(tmp_path: Path,
                                                                           size: tuple[int, int]) -> None:
    gate = threading.Event()
    trainer = FakeTrainer(total=5, gate=gate)
    app = make_app(Settings(), Services(extra={"train_run": trainer}))
    async with app.run_test(size=size) as pilot:
        await show_train(app, pilot)
        data = tmp_path / "d.jsonl"
        data.write_text('{"text": "hello world"}\n' * 8)
        form = app.query_one(RunForm)
        form.set_value("model", "hf:tiny/model")
        form.set_value("data", str(data))
        side, chart = app.query_one("#train-side"), app.query_one("#loss-chart")
        assert side.display and chart.size.width < size[0] - 50  # idle: the form beside the monitor
        app.query_one("#train-start").focus()
        await pilot.press("t")
        await wait_for(pilot, lambda: trainer.running.is_set() and not side.display, what="the form folded")
        await pilot.pause(0.3)
        assert chart.size.width >= size[0] - 6  # the monitor has the width
        assert app.focused is not None and app.query_one("#train-pane") in app.focused.ancestors
        await pilot.press("c")  # the form comes back while the run goes on
        await pilot.pause(0.3)
        assert side.display and app.focused is app.query_one("#in-model")
        gate.set()
        await wait_for(pilot, lambda: app.query_one("#train-pane").state.status == "finished", what="the run end")
        assert side.display


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
async def test_the_dataset_template_warning_is_shown_whole(tmp_path: Path, size: tuple[int, int]) -> None:
    """The walkthrough's warning stopped mid-quote at 120 columns; it wraps now, whole."""
    from tests.tui.test_dataset_pane import fake_loader, wait_dataset_workers

    data = tmp_path / "chat.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}\n')
    calls: list = []
    app = make_app(Settings(), Services(extra={"render_context_loader": fake_loader(calls)}))
    async with app.run_test(size=size) as pilot:
        await pilot.press("3")
        pane = app.query_one("#dataset-pane")
        pane.query_one("#dataset-model").value = "ollama:qwen2.5:0.5b"
        pane.query_one("#dataset-model").focus()
        await pilot.press("enter")
        pane.open_dataset(str(data))
        await wait_dataset_workers(pilot)
        await pilot.pause(0.3)
        message = pane.context.check.message
        assert len(message) > size[0]  # longer than a line: it has to wrap to be whole
        shown = " ".join(screen_text(app).split())
        assert " ".join(message.split()) in shown


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
async def test_status_lines_are_shown_whole(tmp_path: Path, size: tuple[int, int]) -> None:
    """The Models status with the server down and no models folder (the longest it gets) and the Train monitor's
    idle title are shown to their last word, not cut after a line or three."""
    import textwrap

    from textual.widgets import Static

    from llamaforge_tui.tui.widgets.models_pane import ModelsPane
    from llamaforge_tui.tui.widgets.run_monitor import IDLE_TITLE

    app = make_app(Settings(models_dirs=[str(tmp_path / "no-such-store")]), Services())
    async with app.run_test(size=size) as pilot:
        pane = app.query_one(ModelsPane)
        await wait_for(pilot, lambda: pane.scan is not None and pane.server is not None
                       and not pane.has_class("-scanning"), what="the scan and the server check")
        await pilot.pause()
        status = str(app.query_one("#models-status", Static).render())
        assert "not reachable at http://127.0.0.1:9" in status and "models folder" in status
        flat = " ".join(screen_text(app).split())
        for word_run in (status.split(" · ")[0], status.split(" · ")[-1]):  # the first fact and the last
            assert " ".join(word_run.split()) in flat, (size, word_run)
        await show_train(app, pilot)
        await pilot.pause()
        flat = " ".join(line.split("│")[-1].strip() for line in screen_text(app).splitlines())
        assert " ".join(IDLE_TITLE.split()) in " ".join(flat.split()), (size, textwrap.shorten(flat, 300))
