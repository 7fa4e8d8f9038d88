"""Pilot tests of the Runs tab's actions: details, delete (refused while the lock is held; confirm; cancel),
prune (keep N), mark and compare, at 140x45 and 80x24."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, TabbedContent

from llamaforge_tui.core.settings import Settings
from llamaforge_tui.core.system import GpuSample
from llamaforge_tui.core.train import runs
from llamaforge_tui.core.train.checkpoint import complete_checkpoints
from llamaforge_tui.tui.app import LlamaForgeApp, Services, make_app
from llamaforge_tui.tui.screens.compare_screen import CompareScreen
from llamaforge_tui.tui.screens.confirm_action import ConfirmAction
from llamaforge_tui.tui.screens.prune_screen import PruneScreen
from llamaforge_tui.tui.screens.run_details_screen import RunDetailsScreen, details_text
from llamaforge_tui.tui.widgets.runs_list import RunsList
from tests.core.train.test_runs_manage import fake_run
from train_helpers import screen_text, show_train, wait_for


def no_gpus() -> list[GpuSample]:
    return []


async def open_runs(app: LlamaForgeApp, pilot: Pilot, count: int) -> RunsList:
    await show_train(app, pilot)
    app.query_one("#train-side-tabs", TabbedContent).active = "train-runs-tab"
    table = app.query_one(RunsList)
    await wait_for(pilot, lambda: table.row_count == count, what="the runs listed")
    table.focus()
    await wait_for(pilot, lambda: table.has_focus, what="the runs table focused")
    return table


async def cursor_to(pilot: Pilot, table: RunsList, run_dir: Path) -> None:
    target = next(i for i, r in enumerate(table.runs) if r.path == run_dir)
    table.move_cursor(row=target)
    await pilot.pause()
    assert table.current_run() == run_dir


def app_for(base: Path) -> LlamaForgeApp:
    return make_app(Settings(runs_dir=str(base)), Services(gpu_sampler=no_gpus))


@pytest.mark.parametrize("size", [(140, 45), (80, 24)])
async def test_details_show_the_run(tmp_path: Path, size) -> None:
    run_dir = fake_run(tmp_path, "20261201-100000-tiny")
    app = app_for(tmp_path)
    async with app.run_test(size=size) as pilot:
        table = await open_runs(app, pilot, 1)
        footer = {b.description for _, b, _, _ in app.screen.active_bindings.values() if b.show}
        assert {"Details", "Attach", "Mark", "Compare marked", "Delete run", "Prune"} <= footer
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, RunDetailsScreen), what="the details")
        await wait_for(pilot, lambda: app.screen.details is not None, what="the details read")
        shown = screen_text(app)
        assert "20261201-100000-tiny" in shown and "finished" in shown  # on screen at once, even at 80x24
        text = details_text(app.screen.details).plain  # the whole (scrollable) text
        for expected in ("20261201-100000-tiny", "finished", "4/4", "0.5000", "0.9000", "step 2", "step 4",
                         "not run (llamaforge eval RUN)", "ollama:gemma3:270m"):
            assert expected in text, expected
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, RunDetailsScreen), what="closed")
        assert run_dir.is_dir() and table.has_focus


async def test_delete_is_refused_while_training_then_confirms_what_goes(tmp_path: Path) -> None:
    keep = fake_run(tmp_path, "20261201-090000-keep")
    run_dir = fake_run(tmp_path, "20261201-100000-gone")
    app = app_for(tmp_path)
    async with app.run_test(size=(140, 45)) as pilot:
        table = await open_runs(app, pilot, 2)
        await cursor_to(pilot, table, run_dir)
        with runs.RunLock(run_dir):
            await pilot.press("x")
            await wait_for(pilot, lambda: any("still training" in n.message for n in app._notifications),
                           what="the refusal")
            assert not isinstance(app.screen, ConfirmAction) and run_dir.is_dir()
        await pilot.press("x")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmAction), what="the confirmation")
        text = screen_text(app)
        assert "Delete run 20261201-100000-gone?" in text and "2 checkpoint(s)" in text and "frees" in text
        await pilot.press("n")
        await wait_for(pilot, lambda: not isinstance(app.screen, ConfirmAction), what="cancelled")
        assert run_dir.is_dir()
        await pilot.press("x")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmAction), what="the confirmation")
        await pilot.press("y")
        await wait_for(pilot, lambda: not run_dir.exists(), what="the run deleted")
        await wait_for(pilot, lambda: table.row_count == 1, what="the list reloaded")
        assert keep.is_dir() and table.runs[0].path == keep


async def test_prune_keeps_the_newest_checkpoint(tmp_path: Path) -> None:
    run_dir = fake_run(tmp_path, "20261201-100000-p", steps=6, checkpoints=(2, 4, 6))
    app = app_for(tmp_path)
    async with app.run_test(size=(140, 45)) as pilot:
        await open_runs(app, pilot, 1)
        await pilot.press("p")
        await wait_for(pilot, lambda: isinstance(app.screen, PruneScreen), what="the prune question")
        box = app.screen.query_one(Input)
        box.value = ""
        await pilot.press("1", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmAction), what="the confirmation")
        text = screen_text(app)
        assert "Removes checkpoint step 2" in text and "Removes checkpoint step 4" in text
        assert "Keeps checkpoint step 6" in text and "Keeps the final adapter" in text
        await pilot.press("y")
        await wait_for(pilot, lambda: [s for s, _ in complete_checkpoints(run_dir)] == [6], what="pruned")


async def test_mark_two_runs_and_compare(tmp_path: Path) -> None:
    a = fake_run(tmp_path, "20261201-090000-a", lr=1e-4)
    b = fake_run(tmp_path, "20261201-100000-b", lr=3e-4, steps=3)
    app = app_for(tmp_path)
    async with app.run_test(size=(140, 45)) as pilot:
        table = await open_runs(app, pilot, 2)
        await pilot.press("v")  # nothing marked: says how
        await wait_for(pilot, lambda: any("Mark two runs" in n.message for n in app._notifications), what="hint")
        for run_dir in (a, b):
            await cursor_to(pilot, table, run_dir)
            await pilot.press("space")
        assert table.marked == [a, b]
        await pilot.pause()
        assert "● 20261201-090000-a" in screen_text(app)
        await pilot.press("v")
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen), what="the comparison")
        screen = app.screen
        await wait_for(pilot, lambda: screen.comparison is not None, what="compared")
        grid = screen.query_one(DataTable)
        labels = [str(grid.get_row_at(i)[0]).strip() for i in range(grid.row_count)]
        assert "≠ learning_rate" in labels and "≠ max_steps" in labels
        assert not any("lora_r" in label for label in labels)  # same in both: hidden until d
        assert grid.get_row_at(labels.index("≠ learning_rate"))[0].style == "bold reverse"
        await pilot.press("d")
        labels = [str(grid.get_row_at(i)[0]).strip() for i in range(grid.row_count)]
        assert "lora_r" in labels
        text = screen_text(app)
        assert "20261201-090000-a" in text and "20261201-100000-b" in text and "train loss" in text
        await pilot.press("escape")
        await cursor_to(pilot, table, a)
        await pilot.press("space")  # unmark
        assert table.marked == [b]


async def test_compare_fits_80x24(tmp_path: Path) -> None:
    a = fake_run(tmp_path, "20261201-090000-a", lr=1e-4)
    b = fake_run(tmp_path, "20261201-100000-b", lr=3e-4)
    app = app_for(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await show_train(app, pilot)
        app.push_screen(CompareScreen([a, b]))
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.comparison is not None,
                       what="compared")
        # filled in that callback, shown at a later refresh: wait for the title rather than one pause
        await wait_for(pilot, lambda: "runs; 1 config value(s) differ" in screen_text(app), what="comparison shown")
        text = screen_text(app)
        assert "learning_rate" in text and "runs; 1 config value(s) differ" in text
