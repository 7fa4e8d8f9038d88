"""The Train pane's evaluation key on a real (tiny) run: the worker loads the run, measures base vs tuned with the
real core, writes eval.json and the table shows the generation scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from textual.widgets import TabbedContent
from train_helpers import screen_text, show_train, wait_for

from llamaforge_tui.core.settings import Settings
from llamaforge_tui.tui.app import Services, make_app
from llamaforge_tui.tui.widgets.eval_table import EvalTable
from llamaforge_tui.tui.widgets.runs_list import RunsList
from tests.fixtures.export_runs import make_run, write_chat_jsonl
from tests.fixtures.train_models import make_tiny_llama, one_thread  # noqa: F401

EVAL_COLUMN = 2  # the Runs list: run, status, eval, step, loss

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


async def test_b_evaluates_a_real_run(tmp_path: Path) -> None:
    model = make_tiny_llama(tmp_path / "model")
    run_dir = make_run(tmp_path / "runs" / "tiny-run", str(model), weights="gguf",
                       data=write_chat_jsonl(tmp_path / "qa.jsonl"), scale=0.2)
    app = make_app(Settings(runs_dir=str(tmp_path / "runs")), Services(gpu_sampler=list))
    async with app.run_test(size=(120, 40)) as pilot:
        await show_train(app, pilot)
        app.query_one("#train-side-tabs", TabbedContent).active = "train-runs-tab"
        runs = app.query_one(RunsList)
        await wait_for(pilot, lambda: runs.row_count == 1, what="the run listed")
        runs.focus()
        table = app.query_one(EvalTable)
        await wait_for(pilot, lambda: table.run_dir == run_dir, what="the run highlighted")
        await pilot.press("b")
        await wait_for(pilot, lambda: table.evaluating is None and table.data is not None, timeout=240,
                       what="the evaluation to finish")
        record = json.loads((run_dir / "eval.json").read_text(encoding="utf-8"))
        assert record["split"] == "train" and record["generated"] == 4
        assert record["base"]["loss"] != record["tuned"]["loss"]
        text = screen_text(app)
        assert "exact match" in text and "ROUGE-L" in text and f"{record['tuned']['loss']:.4f}" in text
        await wait_for(pilot, lambda: str(runs.get_row_at(0)[EVAL_COLUMN]).startswith("EM "), what="the eval column")
