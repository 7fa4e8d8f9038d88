"""Train pane with the real trainer on a tiny random Llama (CPU, a few steps): live chart and step
counter, RunFinished; stop mid-run, then resume to the end."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from textual.widgets import Button

from llamaforge_tui.core.train.events import CheckpointSaved, RunFinished, RunStarted, StepLogged
from llamaforge_tui.core.settings import Settings
from llamaforge_tui.tui.app import Services, make_app
from llamaforge_tui.tui.widgets.loss_chart import LossChart
from llamaforge_tui.tui.widgets.run_form import RunForm
from llamaforge_tui.tui.widgets.train_pane import TrainPane
from tests.fixtures.train_models import make_tiny_llama, write_qa_jsonl
from train_helpers import screen_text, show_train, wait_for, wait_for_training

pytestmark = pytest.mark.slow
SIZE = (140, 45)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiny-train")
    return make_tiny_llama(root / "tiny-llama"), write_qa_jsonl(root / "qa.jsonl", repeat=4)


def no_gpus() -> list:
    return []


def paced_trainer(seconds_per_step: float):
    """The real ``core.trainer.run``, with each step's event held a moment so a test can act mid-run."""
    from llamaforge_tui.core.train.trainer import run

    def train(config, emit, stop_event, **kwargs):
        def slow_emit(event):
            emit(event)
            if isinstance(event, StepLogged):
                time.sleep(seconds_per_step)
        return run(config, slow_emit, stop_event, **kwargs)
    return train


async def start_from_form(app, pilot, model: Path, data: Path, steps: int) -> TrainPane:
    await show_train(app, pilot)
    form = app.query_one(RunForm)
    for name, value in (("model", str(model)), ("data", str(data)), ("max_steps", str(steps)),
                        ("batch_size", "2"), ("max_seq_len", "64"), ("save_every", "2"), ("learning_rate", "1e-3")):
        form.set_value(name, value)
    assert form.errors == {}
    app.query_one("#train-start", Button).focus()
    await pilot.press("t")
    return app.query_one(TrainPane)


async def test_real_run_updates_chart_and_counter_and_finishes(tiny: tuple[Path, Path]) -> None:
    model, data = tiny
    messages: list = []
    app = make_app(Settings(), Services(gpu_sampler=no_gpus))
    async with app.run_test(size=SIZE, message_hook=messages.append) as pilot:
        pane = await start_from_form(app, pilot, model, data, steps=6)
        chart = app.query_one(LossChart)
        await wait_for(pilot, lambda: len(chart.train_points) >= 1, timeout=120, what="the first step")
        await wait_for_training(pilot, app, timeout=180)
        events = [e for m in messages if isinstance(m, TrainPane.EventsArrived) for e in m.events]
        assert any(isinstance(e, RunStarted) for e in events)
        assert [e.step for e in events if isinstance(e, StepLogged)] == [1, 2, 3, 4, 5, 6]
        finished = [e for e in events if isinstance(e, RunFinished)]
        assert finished and not finished[0].stopped and finished[0].step == 6
        assert [p[0] for p in chart.train_points] == [1, 2, 3, 4, 5, 6]
        await wait_for(pilot, lambda: chart.drawn_step == 6, timeout=10, what="the chart redrawn up to step 6")
        assert pane.state.status == "finished"
        text = screen_text(app)
        assert "step 6/6" in text and ": finished" in text and "tok/s" in text
        assert Path(finished[0].adapter_path, "adapter_model.safetensors").is_file()


async def test_real_run_stop_then_resume(tiny: tuple[Path, Path]) -> None:
    model, data = tiny
    messages: list = []
    app = make_app(Settings(), Services(gpu_sampler=no_gpus, extra={"train_run": paced_trainer(0.4)}))
    async with app.run_test(size=SIZE, message_hook=messages.append) as pilot:
        pane = await start_from_form(app, pilot, model, data, steps=12)
        await wait_for(pilot, lambda: pane.state.step >= 3, timeout=120, what="three steps")
        await pilot.press("s")
        await wait_for_training(pilot, app, timeout=120)
        assert pane.state.status == "stopped"
        stopped_at = pane.state.step
        assert 3 <= stopped_at < 12
        run_dir = Path(pane.state.run_dir)
        saved = [e for m in messages if isinstance(m, TrainPane.EventsArrived) for e in m.events
                 if isinstance(e, CheckpointSaved)]
        assert saved and saved[-1].step == stopped_at and Path(saved[-1].path).is_dir()
        await pilot.press("r")
        await wait_for_training(pilot, app, timeout=180)
        assert pane.state.status == "finished" and pane.state.step == 12
        assert pane.state.started.resumed_from_step == stopped_at
        assert [p[0] for p in pane.state.train_points] == list(range(1, 13))
        assert Path(pane.state.run_dir) == run_dir
        assert "step 12/12" in screen_text(app)
