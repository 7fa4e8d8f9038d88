"""The app shell: single-key panes, palette entries, footer bindings, NO_COLOR, quitting, worker errors."""

from __future__ import annotations

import pytest
from textual.filter import Monochrome, NoColor
from textual.widgets import Button, DataTable, TabbedContent, TabPane

from llamaforge_tui.core.errors import LlamaForgeError
from llamaforge_tui.core.settings import Settings
from llamaforge_tui.tui.app import make_app
from train_helpers import wait_for


async def test_single_keys_switch_panes() -> None:
    app = make_app(Settings())
    async with app.run_test(size=(80, 24)) as pilot:
        tabs = app.query_one("#panes", TabbedContent)
        assert tabs.active == "models"
        for key, pane in (("2", "cache"), ("3", "dataset"), ("4", "train"), ("1", "models")):
            await pilot.press(key)
            assert tabs.active == pane
        assert app.focused is app.query_one("#models-table", DataTable)  # back on Models: keys go to its table


@pytest.mark.parametrize("attempt", range(8))  # the loop this guards against was a race: try it a few times
async def test_switching_pane_at_start_settles_without_a_focus_loop(attempt: int) -> None:
    """A pane switch in the app's first moments used to leave stale focus and tab messages behind that
    re-activated the old pane; two panes then passed the focus back and forth for ever (a busy UI thread)."""
    app = make_app(Settings())
    async with app.run_test(size=(120, 40)) as pilot:
        changes: list = []
        app.watch(app.screen, "focused", lambda widget: changes.append(widget), init=False)
        app.action_show_pane("train")
        start = app.query_one("#train-start", Button)
        await wait_for(pilot, lambda: app.focused is start, timeout=30, what="the Train pane focused")
        settled = len(changes)
        await pilot.pause(1.0)
        assert changes[settled:] == [], "focus still moving a second after the switch"
        assert app.query_one("#panes", TabbedContent).active == "train"
        assert app.focused is app.query_one("#train-start", Button)


async def test_a_stale_focus_message_does_not_switch_panes_back() -> None:
    app = make_app(Settings())
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("4")
        start = app.query_one("#train-start", Button)
        await wait_for(pilot, lambda: app.focused is start, timeout=30, what="the Train pane focused")
        tabs = app.query_one("#panes", TabbedContent)
        models = app.query_one("#models", TabPane)
        models.post_message(TabPane.Focused(models))  # as if queued before the switch: models holds no focus now
        await pilot.pause(0.3)
        assert tabs.active == "train"
        assert app.focused is app.query_one("#train-start", Button)


async def test_clicking_a_tab_switches_and_focuses_its_pane() -> None:
    app = make_app(Settings())
    async with app.run_test(size=(120, 40)) as pilot:
        tabs = app.query_one("#panes", TabbedContent)
        for pane, target in (("cache", "#cache-table"), ("train", "#train-start"), ("dataset", "#dataset-records"),
                             ("models", "#models-table")):
            await pilot.click(f"#--content-tab-{pane}")
            widget = app.query_one(target)
            await wait_for(pilot, lambda: app.focused is widget, timeout=30, what=f"{target} focused")
            assert tabs.active == pane


async def test_footer_bindings_and_palette_commands() -> None:
    app = make_app(Settings())
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        keys = set(app.screen.active_bindings)
        assert {"1", "2", "3", "4", "q", "slash", "r", "d"} <= keys
        titles = [cmd.title for cmd in app.get_system_commands(app.screen)]
        for title in ("Go to Models", "Go to HF cache", "Go to Dataset", "Go to Train", "Rescan Ollama models"):
            assert title in titles
        go_cache = next(cmd for cmd in app.get_system_commands(app.screen) if cmd.title == "Go to HF cache")
        go_cache.callback()
        await pilot.pause()
        assert app.query_one("#panes", TabbedContent).active == "cache"


@pytest.mark.parametrize("key", ["q", "ctrl+q"])
async def test_quits_cleanly(key: str) -> None:
    app = make_app(Settings())
    async with app.run_test(size=(80, 24)) as pilot:
        assert not app._exit
        await pilot.press(key)
        await pilot.pause()
        assert app._exit  # exit() was called: no confirmation needed when nothing is training
    assert app.return_code in (0, None)


async def test_no_color_is_respected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    app = make_app(Settings())
    assert app.no_color
    async with app.run_test(size=(80, 24)):
        assert any(isinstance(f, (NoColor, Monochrome)) for f in app._filters)


async def test_worker_errors_become_notifications() -> None:
    app = make_app(Settings())
    async with app.run_test(size=(80, 24)) as pilot:
        def boom() -> None:
            raise LlamaForgeError("disk on fire [not markup]")

        app.run_worker(boom, thread=True, name="boom", description="Test job", exit_on_error=False)
        for _ in range(100):
            if app._notifications:
                break
            await pilot.pause(0.05)
        messages = [n.message for n in app._notifications]
        assert "Test job failed: disk on fire [not markup]" in messages


async def test_finished_download_rescans_the_models_pane(monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    from llamaforge_tui.tui.widgets.cache_pane import CachePane
    from llamaforge_tui.tui.widgets.models_pane import ModelsPane

    rescans: list[str] = []
    monkeypatch.setattr(ModelsPane, "action_rescan", lambda self: rescans.append("rescan"))
    app = make_app(Settings())
    async with app.run_test(size=(80, 24)) as pilot:
        cache_pane = app.query_one("#cache-pane", CachePane)
        cache_pane.post_message(CachePane.DownloadFinished("acme/tiny", Path("/tmp/snap")))
        await pilot.pause()
        assert rescans == ["rescan"]


def test_the_tui_logs_to_a_file_not_over_the_screen(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # noqa: ANN001
    import logging

    from llamaforge_tui import cli

    root = logging.getLogger()
    saved = root.handlers[:]
    monkeypatch.setenv("LLAMAFORGE_DATA_DIR", str(tmp_path))
    root.handlers.clear()
    try:
        cli._configure_logging(False, tui=True)
        logging.getLogger("llamaforge_tui.test").warning("a warning while the UI runs")
        assert not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
                       for h in root.handlers)
        for h in root.handlers:
            h.flush()
        assert "a warning while the UI runs" in (tmp_path / "llamaforge.log").read_text()
    finally:
        for h in root.handlers:
            h.close()
        root.handlers[:] = saved
