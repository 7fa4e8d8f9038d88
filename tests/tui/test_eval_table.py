"""The Train pane's evaluation table: the highlighted run's eval.json or end-of-run summary, the Runs list's eval
column, b to evaluate in a worker with progress, b again to cancel (nothing written); at 80x24 and 120x40."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from textual.widgets import TabbedContent
from train_helpers import screen_text, show_train, wait_for

from llamaforge_tui.core.infer.evaluate import (
    EVAL_FILE,
    EvalCancelled,
    EvalProgress,
    EvalResult,
    SideScores,
    write_eval,
)
from llamaforge_tui.core.settings import Settings
from llamaforge_tui.core.train.config import TrainConfig
from llamaforge_tui.core.train.events import (
    EvalSummary,
    EventLog,
    RunFinished,
    RunStarted,
)
from llamaforge_tui.tui.app import Services, make_app
from llamaforge_tui.tui.widgets.eval_table import EvalTable
from llamaforge_tui.tui.widgets.runs_list import RunsList

EVAL_COLUMN = 2  # the Runs list: run, status, eval, step, loss


def _result(run_dir: Path, em: float = 0.875) -> EvalResult:
    return EvalResult(run=run_dir.name, path=str(run_dir), split="eval", examples=8, generated=8,
                      base=SideScores(loss=3.5, perplexity=33.1, exact_match=0.0, token_f1=0.1, rouge_l=0.1),
                      tuned=SideScores(loss=0.5, perplexity=1.65, exact_match=em, token_f1=0.9, rouge_l=0.9),
                      created=2e9)


def _run(root: Path, name: str, *, summary: bool = False, evaluated: bool = False) -> Path:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    TrainConfig(model="hf:tiny/model", data=str(root / "d.jsonl"), output_dir=str(run_dir)).to_file(
        run_dir / "config.toml")
    with EventLog(run_dir) as log:
        log.append(RunStarted(run_id=name, run_dir=str(run_dir), config={}, source={}, total_steps=4,
                              trainable_params=1, total_params=2, time=1e9))
        if summary:
            log.append(EvalSummary(step=4, split="eval", base_loss=4.0, tuned_loss=1.25, base_perplexity=54.6,
                                   tuned_perplexity=3.49, tokens=120, examples=3, time=1e9 + 1))
        log.append(RunFinished(step=4, total_steps=4, stopped=False, final_loss=1.0, adapter_path=None,
                               elapsed_seconds=1.0, time=1e9 + 2))
    if evaluated:
        write_eval(run_dir, _result(run_dir))
    return run_dir


class FakeEvaluate:
    """Stands in for ``evaluate_run``: reports progress until ``release`` is set (then writes a result) or the
    stop event is (then raises EvalCancelled, writing nothing, as the core does)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls: list[Path] = []

    def __call__(self, run: Path, settings: Settings, *, progress, stop_event: threading.Event) -> EvalResult:
        self.calls.append(Path(run))
        for i in range(10_000):
            progress(EvalProgress("generate", i, 50, f"answering {i % 50 + 1}/50 (base and tuned)", elapsed=65.0))
            if stop_event.wait(0.02):
                raise EvalCancelled("evaluation cancelled")
            if self.release.is_set():
                break
        result = _result(Path(run), em=0.5)
        write_eval(run, result)
        return result


def _app(root: Path, fake: FakeEvaluate | None = None):
    settings = Settings(runs_dir=str(root))
    return make_app(settings, Services(gpu_sampler=list, extra={"evaluate_run": fake} if fake else {}))


async def _show_runs(app, pilot) -> RunsList:
    await show_train(app, pilot)
    app.query_one("#train-side-tabs", TabbedContent).active = "train-runs-tab"
    runs = app.query_one(RunsList)
    await wait_for(pilot, lambda: runs.row_count >= 2, what="the runs listed")
    runs.focus()
    await pilot.pause()
    return runs


def _row(runs: RunsList, name: str) -> int:
    return next(i for i, r in enumerate(runs.runs) if r.run_id == name)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
async def test_table_shows_the_highlighted_runs_evaluation(tmp_path: Path, size: tuple[int, int]) -> None:
    _run(tmp_path, "run-a", evaluated=True)
    _run(tmp_path, "run-b", summary=True)
    app = _app(tmp_path)
    async with app.run_test(size=size) as pilot:
        runs = await _show_runs(app, pilot)
        table = app.query_one(EvalTable)
        eval_column = {r.run_id: str(runs.get_row_at(i)[EVAL_COLUMN]) for i, r in enumerate(runs.runs)}
        assert eval_column == {"run-a": "EM 0→88%", "run-b": "-"}

        runs.move_cursor(row=_row(runs, "run-a"))
        await wait_for(pilot, lambda: table.data is not None and table.run_dir.name == "run-a", what="run-a shown")
        # the data lands before the next frame draws it (CI saw the frame before): wait for the screen itself
        await wait_for(pilot, lambda: "Evaluation of run-a" in screen_text(app), what="run-a drawn")
        text = screen_text(app)
        assert "Evaluation of run-a" in text and "(eval split, 8 examples, 8" in text
        assert "b evaluates base vs tuned" in text  # the key, where the table is (the footer is full)
        assert "exact match" in text and "87.5%" in text and "+87.5 pts" in text

        runs.move_cursor(row=_row(runs, "run-b"))
        await wait_for(pilot, lambda: table.run_dir.name == "run-b" and table.data is not None
                       and table.data.get("end_of_run"), what="run-b's end-of-run summary")
        await wait_for(pilot, lambda: "4.0000" in screen_text(app), what="run-b drawn")
        text = screen_text(app)
        assert "4.0000" in text and "1.2500" in text and "exact match" not in text
        active = app.active_bindings
        assert "b" in active and active["b"].binding.action == "evaluate" and active["b"].binding.show


async def test_evaluate_with_progress_then_cancel_writes_nothing(tmp_path: Path) -> None:
    run_dir = _run(tmp_path, "run-a")
    _run(tmp_path, "run-b")
    fake = FakeEvaluate()
    app = _app(tmp_path, fake)
    async with app.run_test(size=(120, 40)) as pilot:
        runs = await _show_runs(app, pilot)
        runs.move_cursor(row=_row(runs, "run-a"))
        table = app.query_one(EvalTable)
        await wait_for(pilot, lambda: table.run_dir == run_dir, what="run-a shown")
        assert "Not evaluated yet" in screen_text(app)
        await pilot.press("b")
        await wait_for(pilot, lambda: "answering" in screen_text(app), what="progress on screen")
        assert "evaluating 1:05: answering" in screen_text(app) and table.has_class("-running")
        assert fake.calls == [run_dir]
        await pilot.press("b")
        await wait_for(pilot, lambda: table.evaluating is None, what="the cancel to land")
        assert not (run_dir / EVAL_FILE).exists()
        assert not table.has_class("-running") and "Not evaluated yet" in screen_text(app)


async def test_evaluate_to_the_end_updates_table_and_column(tmp_path: Path) -> None:
    run_dir = _run(tmp_path, "run-a", summary=True)
    _run(tmp_path, "run-b")
    fake = FakeEvaluate()
    fake.release.set()
    app = _app(tmp_path, fake)
    async with app.run_test(size=(120, 40)) as pilot:
        runs = await _show_runs(app, pilot)
        runs.move_cursor(row=_row(runs, "run-a"))
        table = app.query_one(EvalTable)
        await wait_for(pilot, lambda: table.data is not None and table.data.get("end_of_run"), what="summary")
        await pilot.press("b")
        await wait_for(pilot, lambda: table.data is not None and table.data.get("generated") == 8,
                       what="the new evaluation shown")
        assert (run_dir / EVAL_FILE).exists() and "50.0%" in screen_text(app)
        await wait_for(pilot, lambda: str(runs.get_row_at(_row(runs, "run-a"))[EVAL_COLUMN]) == "EM 0→50%",
                       what="the runs list's eval column refreshed")
        assert runs.current_run() == run_dir and table.run_dir == run_dir  # the reload kept the cursor


async def test_b_without_a_run_says_what_to_do(tmp_path: Path) -> None:
    app = _app(tmp_path, FakeEvaluate())
    async with app.run_test(size=(80, 24)) as pilot:
        await show_train(app, pilot)
        await pilot.press("b")
        await pilot.pause()
        assert app.query_one(EvalTable).evaluating is None
        assert any("Pick a run under Runs first" in str(n.message) for n in app._notifications)
