"""The monitor's charts: the EMA smoothing of the loss (raw still drawn), and the grad-norm / LR chart."""

from __future__ import annotations

import pytest

from llamaforge_tui.core.train.events import RunStarted, StepLogged
from llamaforge_tui.tui.widgets.loss_chart import LossChart, ema
from llamaforge_tui.tui.widgets.metric_chart import MetricChart
from llamaforge_tui.tui.widgets.run_state import RunState
from tests.tui.test_train_pane import make_train_app
from tests.tui.train_helpers import screen_text, show_train, wait_for


def test_ema_is_debiased_and_continues_where_it_stopped() -> None:
    values = [4.0, 2.0, 3.0, 1.0, 1.5]
    whole, _ = ema(values)
    assert whole[0] == pytest.approx(4.0)  # debiased: the first point is the first value, not 0.4
    first, state = ema(values[:2])
    rest, _ = ema(values[2:], start=state)
    assert first + rest == pytest.approx(whole)
    assert min(values) < whole[-1] < max(values)


def test_run_state_keeps_grad_norm_and_lr_and_a_resume_trims_them() -> None:
    state = RunState()
    for step in range(1, 6):
        state.apply(StepLogged(step=step, total_steps=10, epoch=0.1, loss=1.0, lr=1e-4 * step, grad_norm=0.5 * step,
                               tokens_per_second=1.0, elapsed_seconds=1.0, eta_seconds=1.0))
    assert state.grad_points[-1] == (5, 2.5) and state.lr_points[0] == (1, 1e-4)
    state.apply(RunStarted(run_id="r", run_dir="/r", config={}, source={}, total_steps=10, trainable_params=1,
                           total_params=1, resumed_from_step=3))
    assert [p[0] for p in state.grad_points] == [1, 2, 3] and [p[0] for p in state.lr_points] == [1, 2, 3]


async def test_smoothing_and_the_grad_norm_lr_chart_on_keys() -> None:
    app = make_train_app()
    async with app.run_test(size=(140, 45)) as pilot:
        await show_train(app, pilot)
        loss, metric = app.query_one(LossChart), app.query_one(MetricChart)
        loss.set_points([(i, 5.0 / i + (0.5 if i % 2 else 0.0)) for i in range(1, 101)], [])
        metric.set_series({"grad_norm": [(i, 1.0 + i / 100) for i in range(1, 101)],
                           "lr": [(i, 2e-4 * (1 - i / 100)) for i in range(1, 101)]})
        app.query_one("#train-start").focus()
        await wait_for(pilot, lambda: "grad-norm (all steps), latest 2.000" in screen_text(app),
                       what="the grad-norm chart")
        await pilot.press("m")
        assert loss.smooth is True
        await wait_for(pilot, lambda: "train loss (EMA)" in screen_text(app), what="the smoothed curve")
        text = screen_text(app)
        assert "train loss (raw)" in text and "smoothed" in text  # the raw curve stays, faint
        assert len(loss.smoothed()) == 100 and loss.smoothed()[-1][1] < loss.smoothed()[0][1]
        await pilot.press("g")
        await wait_for(pilot, lambda: "learning rate" in screen_text(app), what="the LR chart")
        await pilot.press("z")
        assert metric.zoom == loss.zoom == 50  # the small chart follows the loss chart's zoom
        await pilot.press("m")
        await wait_for(pilot, lambda: "train loss (EMA)" not in screen_text(app), what="smoothing off")


async def test_on_a_short_screen_the_small_chart_waits_behind_g() -> None:
    app = make_train_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await show_train(app, pilot)
        metric, log = app.query_one(MetricChart), app.query_one("#log-panel")
        app.query_one("#train-start").focus()
        await pilot.pause(0.3)
        assert not metric.display or metric.size.height == 0
        await pilot.press("g")
        await pilot.pause(0.3)
        assert metric.size.height > 0 and log.size.height == 0  # shown in the log's place
        await pilot.press("g", "g")  # learning rate, then hidden again
        await pilot.pause(0.3)
        assert metric.size.height == 0 and log.size.height > 0
