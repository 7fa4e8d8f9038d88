"""Pilot tests of the Models pane against a fixture Ollama store (with the real Gemma blob)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from fixtures.ollama_store import StoreBuilder, StoreInfo, fixture_store, gemma_gguf, small_store  # noqa: F401
from textual.message import Message
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, Static

from llamaforge_tui.core.errors import LlamaForgeError
from llamaforge_tui.core.settings import Settings
from llamaforge_tui.tui.app import LlamaForgeApp, Services
from llamaforge_tui.tui.app import make_app as _make_app
from llamaforge_tui.tui.widgets.models_pane import ModelsPane, detail_rows


def _no_tokenizer(*args: object, **kwargs: object) -> None:
    raise LlamaForgeError("tokenizers are not loaded in Models pane tests")


def make_app(settings: Settings) -> LlamaForgeApp:
    """The real app; the Dataset pane (which follows the selected model) is kept from loading tokenizers."""
    return _make_app(settings, Services(extra={"render_context_loader": _no_tokenizer}))


async def wait_for_scan(app: LlamaForgeApp, pilot: Pilot, *, previous: object = None) -> ModelsPane:
    """Wait for the scan worker's results (models and server status); never for other panes' pollers."""
    pane = app.query_one(ModelsPane)
    for _ in range(400):
        if pane.scan is not None and pane.scan is not previous and pane.server is not None \
                and not pane.has_class("-scanning"):
            await pilot.pause()
            return pane
        await pilot.pause(0.05)
    raise AssertionError("the Models pane never finished scanning")


def _details(app: LlamaForgeApp) -> str:
    return str(app.query_one("#models-details", Static).render())


async def _until(pilot: Pilot, condition: object, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if condition():  # type: ignore[operator]
            return
        await pilot.pause(0.05)
    raise AssertionError("condition never became true")


async def _select(pilot: Pilot, pane: ModelsPane, full_name: str) -> None:
    table = pane.query_one("#models-table", DataTable)
    table.focus()
    target = next(i for i, m in enumerate(pane._shown) if m.full_name == full_name)
    current = table.cursor_row
    for _ in range(abs(target - current)):
        await pilot.press("down" if target > current else "up")
    await pilot.pause()


async def test_lists_fixture_models_and_shows_gemma(fixture_store: StoreInfo, monkeypatch: pytest.MonkeyPatch) -> None:
    from llamaforge_tui.tui.widgets import models_pane

    monkeypatch.setattr(models_pane, "SELECT_SETTLE_SECONDS", 60.0)  # rows passed over are never announced
    messages: list[Message] = []
    app = make_app(Settings(models_dirs=[str(fixture_store.root)]))
    async with app.run_test(size=(120, 40), message_hook=messages.append) as pilot:
        pane = await wait_for_scan(app, pilot)
        table = pane.query_one("#models-table", DataTable)
        assert table.row_count == len(fixture_store.expected)
        assert {m.full_name: m.status for m in pane.models} == fixture_store.expected
        assert app.focused is table  # arrow keys work at once
        await _select(pilot, pane, "gemma3:270m")
        assert pane.selected is not None and pane.selected.full_name == "gemma3:270m"
        assert app.selected_model is None  # the cursor has not rested yet
        await pilot.press("enter")  # choosing a row announces it at once, and opens its Modelfile view
        await _until(pilot, lambda: app.selected_model is pane.selected)
        from llamaforge_tui.tui.screens.model_show import ModelShowScreen

        await _until(pilot, lambda: isinstance(app.screen, ModelShowScreen))
        await pilot.press("escape")
        await _until(pilot, lambda: not isinstance(app.screen, ModelShowScreen))
        details = _details(app)
        for expected in ("gemma3", "Q4_K_M", "268M", "32,768", "262,144", str(pane.selected.gguf_path),
                         "google/gemma-3-270m-it", "table: gemma3 270m instruct", "needs download (about 540.00 MB)",
                         "Chat template  no", "template, params, license", "Heads          4 (KV 1)",
                         "Tensor types   109 F32, 81 Q5_0, 27 Q4_K, 10 Q8_0, 9 Q6_K"):
            assert expected in details, expected
        posted = {id(m): m for m in messages if isinstance(m, ModelsPane.ModelSelected)}  # one per post, not per hop
        selected = [m.model.full_name for m in posted.values()]
        assert selected == ["gemma3:270m"]
        status = str(app.query_one("#models-status", Static).render())
        usable = sum(1 for status in fixture_store.expected.values() if status == "ok")
        assert f"{len(fixture_store.expected)} models ({usable} usable)" in status
        assert "Ollama server not reachable at http://127.0.0.1:9" in status


async def test_filter_and_clear(small_store: StoreInfo) -> None:
    app = make_app(Settings(models_dirs=[str(small_store.root)]))
    async with app.run_test(size=(100, 30)) as pilot:
        pane = await wait_for_scan(app, pilot)
        table = pane.query_one("#models-table", DataTable)
        await pilot.press("slash")
        box = pane.query_one("#models-filter", Input)
        assert box.display and app.focused is box
        for key in "qwen3":
            await pilot.press(key)
        await pilot.pause()
        assert [m.full_name for m in pane._shown] == ["qwen3:0.6b"]
        assert table.row_count == 1 and pane.selected is not None and pane.selected.full_name == "qwen3:0.6b"
        # Once the selection rests, the other panes hear about it (app.selected_model).
        await _until(pilot, lambda: getattr(app.selected_model, "full_name", None) == "qwen3:0.6b")
        await pilot.press("enter")
        assert app.focused is table
        await pilot.press("slash")
        assert app.focused is box
        box.value = ""
        for key in "broken":
            await pilot.press(key)
        await pilot.pause()
        assert {m.full_name for m in pane._shown} == {"corrupt:latest", "wrongschema:latest", "evil:latest",
                                                      "truncated:latest"}
        await pilot.press("escape")
        await pilot.pause()
        assert not box.display and box.value == "" and table.row_count == len(small_store.expected)


async def test_rescan_picks_up_new_models_without_blocking(small_store: StoreInfo,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from llamaforge_tui.tui.widgets import models_pane

    release = threading.Event()
    real_scan = models_pane.scan_models

    def held_scan(settings: Settings) -> object:
        assert release.wait(30), "the test never released the scan"
        return real_scan(settings)

    app = make_app(Settings(models_dirs=[str(small_store.root)]))
    async with app.run_test(size=(100, 30)) as pilot:
        pane = await wait_for_scan(app, pilot)
        first = pane.scan
        b = StoreBuilder(small_store.root)
        b.write("newcomer", "latest", b.manifest([b.gguf_layer(small_store.tiny_path)]))
        monkeypatch.setattr(models_pane, "scan_models", held_scan)
        await pilot.press("r")
        # The scan is stuck in its worker, and the UI still answers keys.
        assert pane.has_class("-scanning") and pane.scan is first
        assert "Scanning" in str(app.query_one("#models-status", Static).render())
        await pilot.press("slash")
        assert app.focused is pane.query_one("#models-filter", Input)
        await pilot.press("escape")
        release.set()
        pane = await wait_for_scan(app, pilot, previous=first)
        assert "newcomer:latest" in {m.full_name for m in pane.models}
        assert pane.query_one("#models-table", DataTable).row_count == len(small_store.expected) + 1


async def test_download_request_and_no_mapping(small_store: StoreInfo) -> None:
    messages: list[Message] = []
    app = make_app(Settings(models_dirs=[str(small_store.root)]))
    async with app.run_test(size=(100, 30), message_hook=messages.append) as pilot:
        pane = await wait_for_scan(app, pilot)
        await _select(pilot, pane, "localhost:5000/team/coder:1.0")
        assert "no mapping: will train from the GGUF" in _details(app)
        assert "not an Ollama library family" in _details(app)
        await pilot.press("d")
        assert not [m for m in messages if isinstance(m, ModelsPane.DownloadRequested)]
        await _select(pilot, pane, "llama3.2:1b")
        assert "press d to download it" in _details(app)
        pane.post_message(ModelsPane.DownloadRequested("meta-llama/Llama-3.2-1B-Instruct"))  # what `d` posts
        await pilot.pause()
        requested = [m for m in messages if isinstance(m, ModelsPane.DownloadRequested)]
        assert requested and requested[0].repo_id == "meta-llama/Llama-3.2-1B-Instruct"


async def test_works_at_80x24_and_with_markup_like_names(small_store: StoreInfo, tmp_path: Path) -> None:
    b = StoreBuilder(small_store.root)
    b.write("weird[red]", "x[i]", b.manifest([b.gguf_layer(small_store.tiny_path)]), namespace="ns[b]")
    app = make_app(Settings(models_dirs=[str(small_store.root)]))
    async with app.run_test(size=(80, 24)) as pilot:
        pane = await wait_for_scan(app, pilot)
        assert pane.has_class("-narrow")
        names = {m.full_name for m in pane.models}
        assert "ns[b]/weird[red]:x[i]" in names
        await _select(pilot, pane, "ns[b]/weird[red]:x[i]")
        assert "ns[b]/weird[red]:x[i]" in _details(app)
        table = pane.query_one("#models-table", DataTable)
        details = pane.query_one("#models-details-box")
        assert table.region.height >= 5 and details.region.height >= 5
        assert table.region.width <= 80 and details.region.y > table.region.y


async def test_override_the_base_model_with_o(small_store: StoreInfo) -> None:
    settings = Settings(models_dirs=[str(small_store.root)])
    app = make_app(settings)
    async with app.run_test(size=(100, 30)) as pilot:
        pane = await wait_for_scan(app, pilot)
        await _select(pilot, pane, "localhost:5000/team/coder:1.0")
        first = pane.scan
        await pilot.press("o")
        box = app.screen.query_one("#base-override-input", Input)
        for key in "bad id":
            await pilot.press(key if key != " " else "space")
        await pilot.press("enter")
        assert "not a repo id" in str(app.screen.query_one("#base-override-error", Static).render())
        box.value = ""
        for key in "Qwen/Qwen2.5-0.5B-Instruct":
            await pilot.press(key)
        await pilot.press("enter")
        pane = await wait_for_scan(app, pilot, previous=first)
        assert Settings.load().base_model_overrides == {"localhost:5000/team/coder:1.0": "Qwen/Qwen2.5-0.5B-Instruct"}
        assert Settings.load().models_dirs == []  # the --models-dir given at start is not written back
        assert pane.selected is not None and pane.selected.full_name == "localhost:5000/team/coder:1.0"
        assert "user: user override in settings" in _details(app)


async def test_empty_store_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "empty" / "manifests").mkdir(parents=True)
    app = make_app(Settings(models_dirs=[str(tmp_path / "empty")]))
    async with app.run_test(size=(80, 24)) as pilot:
        pane = await wait_for_scan(app, pilot)
        assert pane.models == [] and pane.query_one("#models-table", DataTable).row_count == 0
        assert "No Ollama models found" in _details(app)
        assert "0 models (0 usable)" in str(app.query_one("#models-status", Static).render())


def test_detail_rows_for_an_unusable_model(small_store: StoreInfo) -> None:
    from llamaforge_tui.core.model.basemodel import find_ollama_model as find_model

    model = find_model(Settings(models_dirs=[str(small_store.root)]), "gpt-oss:120b-cloud")
    rows = dict(detail_rows(model))
    assert rows["Status"] == "cloud" and "remotely" in rows["Why"]
    assert "GGUF blob" not in rows and rows["Ollama layers"] == "template"
