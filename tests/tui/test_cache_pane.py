"""Pilot tests of the HF cache pane: listing, sorting, details, delete confirmation, downloads."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from textual.app import App, ComposeResult
from textual.pilot import Pilot
from textual.widgets import DataTable, Label, Static, TabbedContent

from llamaforge_tui.core.hub.cache import repo_cache_status
from llamaforge_tui.core.settings import Settings
from llamaforge_tui.tui import app as app_module
from llamaforge_tui.tui.app import make_app
from llamaforge_tui.tui.screens.confirm_delete import ConfirmDelete
from llamaforge_tui.tui.widgets import cache_pane as cache_pane_module
from llamaforge_tui.tui.widgets.cache_pane import CachePane
from llamaforge_tui.tui.widgets.download_progress import DownloadProgressView
from llamaforge_tui.tui.widgets.models_pane import ModelsPane
from tests.fixtures.fake_hub import FakeHub, FakeRepo, go_online
from tests.fixtures.hf_cache_factory import build_realistic_cache, model_files

GROUPS = {"cache-scan", "cache-delete", "cache-download"}


async def settle(pilot: Pilot, timeout: float = 20.0) -> None:
    """Wait for the cache pane's workers only (the GPU poller never finishes), then for their messages."""
    loop_time = 0.0
    while any(w.group in GROUPS and not w.is_finished for w in pilot.app.workers):
        await pilot.pause(0.05)
        loop_time += 0.05
        assert loop_time < timeout, "cache workers did not finish"
    await pilot.pause()
    await pilot.pause()


def row_ids(table: DataTable) -> list[str]:
    return [str(table.get_row_at(i)[0]) for i in range(table.row_count)]


@pytest.fixture
def cache(tmp_path: Path):
    return build_realistic_cache(tmp_path / "hub")


@pytest.fixture
def mapped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_pane_module, "ollama_models_by_repo",
                        lambda settings: ({"acme/big-model": ["big:latest", "user/big:q4"]}, None))


class PaneHost(App[None]):
    """Just the cache pane, with the attributes it reads from the real app (faster than the whole app)."""

    CSS_PATH = str(Path(app_module.__file__).with_name("app.tcss"))

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings
        self.selected_model: object = None

    def compose(self) -> ComposeResult:
        yield CachePane(id="cache-pane")


def host(cache_dir: Path) -> PaneHost:
    return PaneHost(Settings(hf_cache_dir=str(cache_dir)))


async def open_pane(pilot: Pilot) -> CachePane:
    if isinstance(pilot.app, app_module.LlamaForgeApp):
        await pilot.press("2")
    await settle(pilot)
    return pilot.app.query_one(CachePane)


async def test_lists_repos_sorted_by_size_with_total_and_warnings(cache) -> None:
    app = make_app(Settings(hf_cache_dir=str(cache.root)))
    async with app.run_test(size=(160, 48)) as pilot:
        pane = await open_pane(pilot)
        table = pane.query_one("#cache-table", DataTable)
        assert row_ids(table) == ["acme/big-model", "acme/partial-model", "acme/small-model", "acme/chat-data",
                                  "acme/broken-model"]
        first = [str(c) for c in table.get_row_at(0)]
        assert first[1:5] == ["model", "120.24 kB", "2", "yes"]
        assert [str(c) for c in table.get_row_at(1)][4] == "no"
        assert [str(c) for c in table.get_row_at(4)][4] == "corrupt"
        summary = str(pane.query_one("#cache-summary", Label).render())
        assert "5 repo(s) (1 corrupt), total 134.14 kB" in summary and "1 interrupted download(s)" in summary
        warnings = pane.query_one("#cache-warnings", Static)
        assert warnings.has_class("-shown") and "broken symlink" in str(warnings.render())


async def test_sorting_by_any_column(cache) -> None:
    app = host(cache.root)
    async with app.run_test(size=(160, 48)) as pilot:
        pane = await open_pane(pilot)
        table = pane.query_one("#cache-table", DataTable)
        pane.sort_by("repo")
        await pilot.pause()
        names = row_ids(table)
        assert names == sorted(names)
        pane.sort_by("repo")  # again: descending
        await pilot.pause()
        assert row_ids(table) == sorted(names, reverse=True)
        assert str(table.columns[table.ordered_columns[0].key].label) == "Repo v"
        pane.sort_by("revs")
        await pilot.pause()
        assert row_ids(table)[0] == "acme/big-model"
        table.focus()
        await pilot.press("s")  # cycles to the next column: Complete (complete first, corrupt last)
        assert pane.sort_column == "complete"
        assert row_ids(table)[-1] == "acme/broken-model"
        # Clicking a header sorts by that column.
        await pilot.click("#cache-table", offset=(4, 1))
        await pilot.pause()
        assert (pane.sort_column, pane.sort_reverse) == ("repo", False)
        assert row_ids(table) == sorted(names)
        # The selection follows the repo, not the row number.
        assert pane.selected is not None and pane.selected.repo_id == row_ids(table)[table.cursor_row]


async def test_selected_repo_details(cache, mapped) -> None:
    app = host(cache.root)
    async with app.run_test(size=(160, 48)) as pilot:
        pane = await open_pane(pilot)
        details = pane.query_one("#cache-details", Static)
        revisions = pane.query_one("#cache-revisions", DataTable)
        text = str(details.render())
        assert "acme/big-model  (model)" in text and "refs: main" in text
        assert "Complete model: yes" in text and "Ollama models mapped to it: big:latest, user/big:q4" in text
        assert revisions.row_count == 2
        assert [str(c) for c in revisions.get_row_at(0)][1:3] == [cache.complete_main[:12], "main"]
        pane.query_one("#cache-table", DataTable).focus()
        await pilot.press("down")
        await pilot.pause()
        text = str(details.render())
        assert "acme/partial-model" in text
        assert "Complete model: no, missing model-00002-of-00003.safetensors" in text
        assert "Ollama models mapped to it: none" in text
        for _ in range(3):
            await pilot.press("down")
        await pilot.pause()
        assert "Damaged: Blob missing (broken symlink)" in str(details.render())


async def _mark_old_revision_and_delete(pilot: Pilot, pane: CachePane, cache) -> ConfirmDelete:
    revisions = pane.query_one("#cache-revisions", DataTable)
    revisions.focus()
    await pilot.press("down", "space")
    assert pane.marked == {cache.complete_old}
    assert str(revisions.get_row_at(1)[0]) == "*"
    await pilot.press("x")
    await pilot.pause()
    assert isinstance(pilot.app.screen, ConfirmDelete)
    return pilot.app.screen


async def test_delete_confirmation_cancel_keeps_everything(cache) -> None:
    app = host(cache.root)
    async with app.run_test(size=(160, 48)) as pilot:
        pane = await open_pane(pilot)
        modal = await _mark_old_revision_and_delete(pilot, pane, cache)
        assert "Delete 1 revision(s) of acme/big-model" in str(modal.query_one("#confirm-delete-what", Label).render())
        assert "This frees 60.00 kB" in str(modal.query_one("#confirm-delete-frees", Label).render())
        await pilot.press("n")
        await settle(pilot)
        assert not isinstance(app.screen, ConfirmDelete)
        assert (cache.builder.repo_path("acme/big-model") / "snapshots" / cache.complete_old).exists()
        assert len(pane.query_one("#cache-revisions", DataTable).rows) == 2


async def test_delete_confirmation_confirm_deletes_through_huggingface_hub(cache) -> None:
    app = host(cache.root)
    async with app.run_test(size=(160, 48)) as pilot:
        pane = await open_pane(pilot)
        await _mark_old_revision_and_delete(pilot, pane, cache)
        await pilot.press("y")
        await settle(pilot)
        await settle(pilot)  # the rescan that follows the delete
        repo = cache.builder.repo_path("acme/big-model")
        assert not (repo / "snapshots" / cache.complete_old).exists()
        assert (repo / "snapshots" / cache.complete_main).exists()
        assert repo_cache_status("acme/big-model", cache.root).state == "cached"
        table = pane.query_one("#cache-table", DataTable)
        assert [str(c) for c in table.get_row_at(0)][:4] == ["acme/big-model", "model", "60.24 kB", "1"]
        assert pane.query_one("#cache-revisions", DataTable).row_count == 1


async def test_delete_flags_a_repo_the_selected_model_needs(cache, mapped) -> None:
    app = host(cache.root)
    async with app.run_test(size=(160, 48)) as pilot:
        pane = await open_pane(pilot)
        app.selected_model = SimpleNamespace(full_name="big:latest", base_model=SimpleNamespace(repo="acme/big-model"))
        pane.query_one("#cache-table", DataTable).focus()
        await pilot.press("x")  # nothing marked: the whole repo
        await pilot.pause()
        modal = app.screen
        assert isinstance(modal, ConfirmDelete) and modal.plan.whole_repo
        flagged = [str(label.render()) for label in modal.query(".-flagged")]
        assert any("selected Ollama model big:latest maps to it" in f for f in flagged)
        assert any("big:latest, user/big:q4" in f for f in flagged)
        await pilot.press("escape")
        await pilot.pause()
        # A repo nobody uses is not flagged.
        await pilot.press("down", "down", "x")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDelete) and app.screen.plan.repo_id == "acme/small-model"
        assert len(app.screen.query(".-flagged")) == 0


async def test_download_from_the_input(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with FakeHub() as hub:
        hub.add(FakeRepo("acme/tiny", model_files("tiny", shards=2, shard_bytes=40_000)))
        go_online(monkeypatch, hub)
        app = host(tmp_path / "hub")
        messages: list[object] = []
        async with app.run_test(size=(160, 48), message_hook=messages.append) as pilot:
            pane = await open_pane(pilot)
            assert "empty" in str(pane.query_one("#cache-details", Static).render())
            await pilot.click("#cache-download-input")
            await pilot.press(*"acme/tiny", "enter")
            await settle(pilot)
            await settle(pilot)
            view = pane.query_one(DownloadProgressView)
            assert view.state == "-done" and "acme/tiny is in the cache" in view.line
            progressed = [m.progress for m in messages if isinstance(m, CachePane.DownloadProgressed)]
            assert progressed[0].phase == "resolving" and progressed[-1].phase == "done"
            assert any(p.phase == "downloading" and 0 < p.downloaded_bytes < p.total_bytes for p in progressed)
            assert any(isinstance(m, CachePane.DownloadFinished) and m.repo_id == "acme/tiny" for m in messages)
            assert row_ids(pane.query_one("#cache-table", DataTable)) == ["acme/tiny"]
            assert repo_cache_status("acme/tiny", tmp_path / "hub").state == "cached"


async def test_download_requested_from_the_models_pane(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with FakeHub() as hub:
        hub.add(FakeRepo("acme/other", model_files("other")))
        go_online(monkeypatch, hub)
        app = make_app(Settings(hf_cache_dir=str(tmp_path / "hub")))
        async with app.run_test(size=(160, 48)) as pilot:
            assert app.query_one("#panes", TabbedContent).active == "models"
            # The Models pane's `d` posts DownloadRequested(repo_id); the app switches here and starts it.
            app.query_one(ModelsPane).post_message(ModelsPane.DownloadRequested("acme/other"))
            await pilot.pause()
            assert app.query_one("#panes", TabbedContent).active == "cache"
            await settle(pilot)
            await settle(pilot)
            assert repo_cache_status("acme/other", tmp_path / "hub").state == "cached"
            assert app.query_one(DownloadProgressView).state == "-done"


async def test_download_errors_and_cancel(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with FakeHub(chunk_size=4096, chunk_delay=0.01) as hub:
        hub.add(FakeRepo("acme/slow", model_files("slow", shard_bytes=400_000)))
        go_online(monkeypatch, hub)
        app = host(tmp_path / "hub")
        async with app.run_test(size=(160, 48)) as pilot:
            pane = await open_pane(pilot)
            view = pane.query_one(DownloadProgressView)
            assert pane.start_download("acme/missing")
            await settle(pilot)
            assert view.state == "-failed" and "acme/missing was not found" in view.line and "HF_TOKEN" in view.line

            assert pane.start_download("acme/slow")
            assert not pane.start_download("acme/slow")  # one download at a time
            for _ in range(200):
                await pilot.pause(0.02)
                if "model.safetensors" in view.line and "%" in view.line:
                    break
            pane.query_one("#cache-table", DataTable).focus()
            await pilot.press("c")
            await settle(pilot)
            assert view.state == "-cancelled" and "cancelled" in view.line
            snapshots = list((tmp_path / "hub").glob("models--acme--slow/snapshots/*/*"))
            assert "model.safetensors" not in {p.name for p in snapshots}
            assert not list((tmp_path / "hub").rglob("*.incomplete"))


async def test_hundreds_of_repos_scan_in_a_worker_and_sort(tmp_path: Path) -> None:
    from tests.fixtures.hf_cache_factory import CacheBuilder, commit_hash

    builder = CacheBuilder(tmp_path / "hub")
    for i in range(250):
        builder.add_revision(f"org{i % 5}/m{i:03d}", commit_hash(str(i)),
                             model_files(f"m{i}", shard_bytes=100 + i), refs=("main",))
    app = host(tmp_path / "hub")
    async with app.run_test(size=(160, 48)) as pilot:
        pane = await open_pane(pilot)
        table = pane.query_one("#cache-table", DataTable)
        assert table.row_count == 250
        assert row_ids(table)[0] == "org4/m249"  # the biggest
        pane.sort_by("repo")
        await pilot.pause()
        assert row_ids(table)[:2] == ["org0/m000", "org0/m005"]
        await pilot.press("end")
        await pilot.pause()
        assert pane.selected is not None and pane.selected.repo_id == "org4/m249"
