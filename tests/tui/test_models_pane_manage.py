"""Pilot tests of the Models pane's management actions against the fake Ollama server and a fixture store:
show, copy, rename, delete (with its confirmation), pull (progress, cancel, error), loaded models, no server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fixtures.fake_ollama import FakeOllama
from fixtures.ollama_store import StoreInfo, small_store  # noqa: F401
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, Static

from llamaforge_tui.core.settings import Settings
from llamaforge_tui.tui.app import LlamaForgeApp
from llamaforge_tui.tui.screens.confirm_action import ConfirmAction
from llamaforge_tui.tui.screens.model_show import ModelShowScreen
from llamaforge_tui.tui.screens.name_prompt import NamePrompt
from llamaforge_tui.tui.screens.pull_screen import PullScreen
from llamaforge_tui.tui.screens.running_models import RunningModelsScreen
from llamaforge_tui.tui.widgets.models_pane import ModelsPane
from tests.tui.test_models_pane import _select, make_app, wait_for_scan
from tests.tui.test_models_pane import _until as _until_10s

LAYER = "sha256:" + "e" * 64


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOllama]:
    with FakeOllama() as server:
        monkeypatch.setenv("OLLAMA_HOST", server.host)
        yield server


async def _until(pilot: Pilot, condition: object, timeout: float = 30.0) -> None:
    """Generous: the server calls run in workers on a shared, busy CPU."""
    await _until_10s(pilot, condition, timeout)


def screen_text(app: LlamaForgeApp) -> str:
    return "\n".join(str(w.render()) for w in app.screen.query("Label, Static"))


def footer_keys(app: LlamaForgeApp) -> dict[str, bool]:
    """Footer entries of the focused chain: description -> enabled (only those the footer shows)."""
    return {b.description: enabled for _, b, enabled, _ in app.screen.active_bindings.values() if b.show}


async def _type(pilot: Pilot, text: str) -> None:
    for ch in text:
        await pilot.press({":": "colon", "/": "slash", "-": "minus", ".": "full_stop"}.get(ch, ch))


async def _name(pilot: Pilot, app: LlamaForgeApp, text: str) -> None:
    await _until(pilot, lambda: isinstance(app.screen, NamePrompt))
    app.screen.query_one(Input).value = ""
    await _type(pilot, text)
    await pilot.press("enter")


@pytest.mark.parametrize("size", [(120, 40), (80, 24)])
async def test_show_copy_rename_delete_with_the_server(fake: FakeOllama, small_store: StoreInfo, size) -> None:
    for name in ("alice/tiny-chat:v1", "llama3.2:1b"):
        fake.add_model(name, system="Served system prompt.")
    app = make_app(Settings(models_dirs=[str(small_store.root)]))
    async with app.run_test(size=size) as pilot:
        pane = await wait_for_scan(app, pilot)
        assert pane.server.up and pane.server_down_reason() is None
        keys = footer_keys(app)
        assert all(keys[a] for a in ("Show", "Copy", "Rename", "Delete", "Pull", "Loaded"))
        await _select(pilot, pane, "alice/tiny-chat:v1")
        await pilot.press("enter")
        await _until(pilot, lambda: isinstance(app.screen, ModelShowScreen))
        text = screen_text(app)
        assert "Source: the Ollama server (/api/show)" in text and "Served system prompt." in text
        await pilot.press("escape")

        await pilot.press("c")
        await _name(pilot, app, "mine:v1")
        await _until(pilot, lambda: "mine:v1" in fake.state.models)

        await pilot.press("m")
        await _name(pilot, app, "alice/renamed:v2")
        await _until(pilot, lambda: isinstance(app.screen, ConfirmAction))
        text = screen_text(app)
        assert "Rename alice/tiny-chat:v1 to alice/renamed:v2?" in text and "then deletes the name" in text
        await pilot.press("y")
        await _until(pilot, lambda: "alice/renamed:v2" in fake.state.models
                     and "alice/tiny-chat:v1" not in fake.state.models)

        await _until(pilot, lambda: not pane.has_class("-scanning"))
        await _select(pilot, pane, "llama3.2:1b")
        deletes = fake.state.requests.count(("DELETE", "/api/delete"))  # one so far: the rename's
        await pilot.press("x")
        await _until(pilot, lambda: isinstance(app.screen, ConfirmAction))
        text = screen_text(app)
        assert "Delete llama3.2:1b?" in text and "frees" in text and "blob(s) no other model uses" in text
        assert "keeps sha256:" in text and "shared with" in text  # the tiny GGUF is shared with other models
        await pilot.press("n")  # cancel: nothing is deleted
        await _until(pilot, lambda: not isinstance(app.screen, ConfirmAction))
        await pilot.pause(0.2)
        assert "llama3.2:1b" in fake.state.models
        assert fake.state.requests.count(("DELETE", "/api/delete")) == deletes
        await pilot.press("x")
        await _until(pilot, lambda: isinstance(app.screen, ConfirmAction))
        await pilot.press("y")
        await _until(pilot, lambda: "llama3.2:1b" not in fake.state.models)


async def test_pull_shows_layer_progress_and_the_servers_error(fake: FakeOllama, small_store: StoreInfo) -> None:
    fake.state.registry["qwen2.5:0.5b"] = [(LAYER, 4000)]
    fake.state.pull_step = 1000
    app = make_app(Settings(models_dirs=[str(small_store.root)]))
    async with app.run_test(size=(120, 40)) as pilot:
        pane = await wait_for_scan(app, pilot)
        pane.query_one("#models-table", DataTable).focus()
        await pilot.press("p")
        await _name(pilot, app, "qwen2.5:0.5b")
        await _until(pilot, lambda: isinstance(app.screen, PullScreen))
        screen = app.screen
        await _until(pilot, lambda: "pulled qwen2.5:0.5b" in screen_text(app))
        assert "eeeeeeeeeeee" in screen_text(app) and "4.00 kB/4.00 kB" in screen_text(app)
        await pilot.press("escape")
        await _until(pilot, lambda: not isinstance(app.screen, PullScreen))
        assert screen.tracker.finished and "qwen2.5:0.5b" in fake.state.models

        await pilot.press("p")
        await _name(pilot, app, "nosuch:1b")
        await _until(pilot, lambda: isinstance(app.screen, PullScreen))
        await _until(pilot, lambda: "Pull failed:" in screen_text(app))
        assert "Pull failed: Ollama pull nosuch:1b: pull model manifest: file does not exist" in screen_text(app)
        await pilot.press("escape")


async def test_pull_cancel_with_c(fake: FakeOllama, small_store: StoreInfo) -> None:
    fake.state.registry["big:latest"] = [(LAYER, 10_000_000)]
    fake.state.pull_step = 10_000
    fake.state.line_delay = 0.02
    app = make_app(Settings(models_dirs=[str(small_store.root)]))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for_scan(app, pilot)
        app.push_screen(PullScreen("big", app.query_one(ModelsPane).ollama_server()))
        await _until(pilot, lambda: isinstance(app.screen, PullScreen) and app.screen.tracker.layers)
        screen = app.screen
        await pilot.press("c")
        await _until(pilot, lambda: "cancelled" in screen_text(app))
        assert not screen.tracker.finished and "big:latest" not in fake.state.models
        await pilot.press("escape")


async def test_loaded_models_and_unload(fake: FakeOllama, small_store: StoreInfo) -> None:
    fake.add_model("llama3.2:1b", size=2_000_000_000, running=True)
    app = make_app(Settings(models_dirs=[str(small_store.root)]))
    async with app.run_test(size=(120, 40)) as pilot:
        pane = await wait_for_scan(app, pilot)
        pane.query_one("#models-table", DataTable).focus()
        await pilot.press("l")
        await _until(pilot, lambda: isinstance(app.screen, RunningModelsScreen))
        await _until(pilot, lambda: "1 model(s) loaded" in screen_text(app))
        table = app.screen.query_one(DataTable)
        assert [str(c) for c in table.get_row_at(0)][:3] == ["llama3.2:1b", "2.00 GB", "1.00 GB"]
        await pilot.press("u")
        await _until(pilot, lambda: "no models loaded" in screen_text(app))
        assert fake.state.running == {}


@pytest.mark.parametrize("size", [(120, 40), (80, 24)])
async def test_no_server_disables_the_server_actions_and_says_why(small_store: StoreInfo, size) -> None:
    app = make_app(Settings(models_dirs=[str(small_store.root)]))
    async with app.run_test(size=size) as pilot:
        pane = await wait_for_scan(app, pilot)
        assert not pane.server.up
        keys = footer_keys(app)
        assert keys["Show"] and keys["Rescan"]
        assert not any(keys[a] for a in ("Copy", "Rename", "Delete", "Pull", "Loaded"))
        status = str(app.query_one("#models-status", Static).render())
        assert "copy, rename, delete, pull, loaded: off until the server runs (`ollama serve`, then r)" in status
        for key in ("c", "m", "x", "p", "l"):
            await pilot.press(key)
        await pilot.pause()
        assert app.screen is app.screen_stack[0]  # nothing opened
        await _select(pilot, pane, "llama3.2:1b")
        await pilot.press("enter")  # show still works: from the store's layers
        await _until(pilot, lambda: isinstance(app.screen, ModelShowScreen))
        text = screen_text(app)
        assert "Source: the store's layers" in text and "You are terse." in text
        assert "[bold]not markup[/bold]" in text  # file text is shown as text, not as markup
