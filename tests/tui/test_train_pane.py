"""Train pane with a scripted trainer: refusal of a second start, stop/resume, quit confirmation,
gauges (fake NVML data and the real no-GPU path), the form, the log panel, and attach mode."""

from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path

import pytest
from textual.widgets import Button, Static, TabbedContent

from llamaforge_tui.core.train.events import EventLog, EvalLogged, LogLine, RunFinished, RunStarted, StepLogged
from llamaforge_tui.core.train.runs import RunLock
from llamaforge_tui.core.settings import Settings
from llamaforge_tui.core.gpu_samplers import AutoGpuSampler
from llamaforge_tui.core.system import GpuSample, GpuUnavailable
from llamaforge_tui.core.train.config import TrainConfig
from llamaforge_tui.tui.app import Services, make_app
from llamaforge_tui.tui.screens.confirm_quit import ConfirmQuit
from llamaforge_tui.tui.widgets.gpu_gauges import GpuGauges, GpuRow, bar_text
from llamaforge_tui.tui.widgets.log_panel import LogPanel
from llamaforge_tui.tui.widgets.loss_chart import RENDER_BUDGET, LossChart, downsample, visible
from llamaforge_tui.tui.widgets.run_form import RunForm
from llamaforge_tui.tui.widgets.train_pane import TrainPane
from train_helpers import FakeTrainer, screen_text, show_train, wait_for, wait_for_training

SIZE = (140, 45)


def two_gpus() -> list[GpuSample]:
    return [
        GpuSample(index=0, name="Fake H100", utilization_percent=97.0, memory_used=75 * 10**9,
                  memory_total=80 * 10**9, temperature_c=71.0, power_w=650.0, power_limit_w=700.0),
        GpuSample(index=1, name="Fake A10", utilization_percent=12.0, memory_used=2 * 10**9,
                  memory_total=24 * 10**9, temperature_c=40.0, power_w=None, power_limit_w=None),
    ]


def make_train_app(trainer: FakeTrainer | None = None, gpus=two_gpus, **kwargs):
    services = Services(gpu_sampler=gpus, extra={"train_run": trainer} if trainer else {})
    return make_app(Settings(), services, **kwargs)


def fill_form(app, tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "hello world"}\n' * 8)
    form = app.query_one(RunForm)
    form.set_value("model", "hf:tiny/model")  # parsed, not resolved, by the form
    form.set_value("data", str(data))


async def test_gauges_two_fake_gpus_with_an_na_field() -> None:
    app = make_train_app()
    async with app.run_test(size=SIZE) as pilot:
        await show_train(app, pilot)
        gauges = app.query_one(GpuGauges)
        await wait_for(pilot, lambda: len(gauges.query(GpuRow)) == 2, what="two GPU rows")
        await pilot.pause(0.1)
        hot, cool = gauges.query(GpuRow)
        assert hot.query_one(".gpu-util").has_class("-high")
        assert hot.query_one(".gpu-mem").has_class("-high")  # 75/80 GB = 94%
        assert hot.query_one(".gpu-temp").has_class("-moderate")
        assert cool.query_one(".gpu-util").has_class("-low")
        assert cool.query_one(".gpu-power").has_class("-na")
        text = screen_text(app)
        assert "GPU0 Fake H100" in text and "75.0/80.0G" in text and "650/700W" in text
        assert "N/A W" in text and "Host" in text
        assert not gauges.query_one("#gpu-unavailable").display
        assert gauges.free_accelerator_bytes == ("VRAM", 22 * 10**9)


@pytest.mark.skipif(isinstance(AutoGpuSampler()(), list), reason="this machine has a GPU")
async def test_gauges_real_no_gpu_path_shows_cpu_and_ram() -> None:
    app = make_app(Settings())  # the real NVML sampler
    async with app.run_test(size=SIZE) as pilot:
        await show_train(app, pilot)
        gauges = app.query_one(GpuGauges)
        await wait_for(pilot, lambda: isinstance(gauges.last_gpus, GpuUnavailable), what="a GPU sample")
        await pilot.pause(0.1)
        assert gauges.query_one("#gpu-unavailable").display
        text = screen_text(app)
        assert "No NVIDIA or AMD GPU found" in text  # each backend's own reason is in the line's tooltip
        assert "showing CPU and RAM instead" in str(gauges.query_one("#gpu-unavailable", Static).render())
        assert "CPU " in text and "RAM " in text and "RSS " in text
        assert gauges.free_accelerator_bytes[0] == "RAM" and gauges.free_accelerator_bytes[1] > 0


def test_bar_text() -> None:
    assert bar_text(None, 6) == " N/A  "
    assert bar_text(0, 4) == "░░░░"
    assert bar_text(100, 4) == "████"
    assert bar_text(55, 10) == "█████▌░░░░"  # 5.5 cells: five full, one half


async def test_start_while_running_is_refused_then_stop_and_resume(tmp_path: Path) -> None:
    allow = threading.Semaphore(0)
    trainer = FakeTrainer(total=10, allow=allow, checkpoint_seconds=2.0, run_dir=tmp_path / "fake-run")
    app = make_train_app(trainer)
    async with app.run_test(size=SIZE) as pilot:
        await show_train(app, pilot)
        pane = app.query_one(TrainPane)
        fill_form(app, tmp_path)
        app.query_one("#train-start", Button).focus()
        await pilot.press("t")
        await wait_for(pilot, trainer.running.is_set, what="the run to start")
        worker = pane.train_worker
        for _ in range(2):
            allow.release()  # two steps, then the run waits (active) for more
        await wait_for(pilot, lambda: pane.state.step == 2, what="two steps")
        await pilot.press("t")  # second start: refused, the run goes on
        await pilot.pause(0.1)
        assert pane.train_worker is worker and pane.run_active and len(trainer.calls) == 1
        assert any("already training" in n.message for n in app._notifications)
        assert not trainer.calls[0]["stop_event"].is_set()
        await pilot.press("s")
        assert "stopping…" in str(app.query_one("#run-title", Static).render())
        await wait_for_training(pilot, app)
        assert pane.state.status == "stopped" and pane.state.finished.stopped
        assert "fake-run: stopped" in str(app.query_one("#run-title", Static).render())
        assert not app.query_one("#train-resume", Button).has_class("-unavailable")
        steps_before = pane.state.step
        for _ in range(20):
            allow.release()
        await pilot.press("r")
        await wait_for_training(pilot, app)
        assert trainer.calls[1]["resume_from"] == tmp_path / "fake-run"
        assert trainer.calls[1]["config"].data.endswith("d.jsonl")  # the run's own config.toml
        assert pane.state.status == "finished" and pane.state.step == 10 >= steps_before
        assert [p[0] for p in pane.state.train_points][-1] == 10
        assert "step 10/10" in screen_text(app)


async def test_quit_asks_then_stops_gracefully(tmp_path: Path) -> None:
    gate = threading.Event()
    trainer = FakeTrainer(total=50, gate=gate)
    app = make_train_app(trainer)
    async with app.run_test(size=SIZE) as pilot:
        await show_train(app, pilot)
        fill_form(app, tmp_path)
        app.query_one("#train-start", Button).focus()
        await pilot.press("t")
        await wait_for(pilot, trainer.running.is_set, what="the run to start")
        await pilot.press("q")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmQuit), what="the confirmation")
        await pilot.press("n")  # keep training
        await pilot.pause(0.1)
        assert not isinstance(app.screen, ConfirmQuit) and app.query_one(TrainPane).run_active
        assert not trainer.calls[0]["stop_event"].is_set()
        await pilot.press("q")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmQuit), what="the confirmation again")
        await pilot.press("y")
        await pilot.pause(0.05)
        assert trainer.calls[0]["stop_event"].is_set()
        await wait_for(pilot, lambda: app._exit, timeout=10, what="the app to exit after the checkpoint")
    assert not trainer.running.is_set()  # the trainer returned (checkpoint written) before the app closed


async def test_quit_without_a_run_exits_at_once() -> None:
    app = make_train_app()
    async with app.run_test(size=SIZE) as pilot:
        await show_train(app, pilot)
        app.query_one("#train-start", Button).focus()
        await pilot.press("q")
        await pilot.pause(0.1)
        assert app._exit and not isinstance(app.screen, ConfirmQuit)


async def test_form_validates_each_field_and_refuses_a_bad_start(tmp_path: Path) -> None:
    trainer = FakeTrainer()
    app = make_train_app(trainer)
    async with app.run_test(size=SIZE) as pilot:
        await show_train(app, pilot)
        form = app.query_one(RunForm)
        form.set_value("lora_r", "0")
        form.set_value("learning_rate", "fast")
        form.set_value("data", str(tmp_path / "missing.jsonl"))
        form.set_value("max_steps", "")  # optional: fine
        await pilot.pause()
        assert form.errors["lora_r"] == "lora_r must be >= 1"
        assert form.errors["learning_rate"] == "must be a number"
        assert form.errors["data"] == "no such file"
        assert "max_steps" not in form.errors
        assert "lora_r must be >= 1" in screen_text(app)
        app.query_one("#train-start", Button).focus()
        await pilot.press("t")
        await pilot.pause(0.1)
        assert trainer.calls == [] and app.query_one(TrainPane).train_worker is None
        fill_form(app, tmp_path)
        form.set_value("lora_r", "8")
        form.set_value("learning_rate", "1e-3")
        assert form.errors == {}
        assert form.config().lora_r == 8


async def test_weights_choice_states_its_trade_off(tmp_path: Path) -> None:
    from textual.widgets import Static

    app = make_train_app()
    async with app.run_test(size=SIZE) as pilot:
        await show_train(app, pilot)
        form = app.query_one(RunForm)
        hint = app.query_one("#hint-weights", Static)
        assert "Q4 file is lossy" in str(hint.render())
        form.set_value("weights", "gguf-quantized")
        await pilot.pause()
        assert "adapter for the unchanged model" in str(hint.render())
        form.set_value("weights", "hf")
        await pilot.pause()
        assert "downloaded once" in str(hint.render())


async def test_config_save_and_load_use_the_cli_format(tmp_path: Path) -> None:
    app = make_train_app()
    async with app.run_test(size=SIZE) as pilot:
        await show_train(app, pilot)
        fill_form(app, tmp_path)
        form = app.query_one(RunForm)
        form.set_value("lora_r", "4")
        form.set_value("scheduler", "linear")
        target = tmp_path / "run.toml"
        app.query_one("#config-path").value = str(target)
        app.query_one("#config-save", Button).press()
        await pilot.pause(0.1)
        saved = TrainConfig.from_file(target)
        assert saved.lora_r == 4 and saved.scheduler == "linear" and saved.data.endswith("d.jsonl")
        other = tmp_path / "other.yaml"
        saved.replace(lora_r=32, learning_rate=5e-5, target_modules=["q_proj"]).to_file(other)
        app.query_one("#config-path").value = str(other)
        app.query_one("#config-load", Button).press()
        await pilot.pause(0.1)
        assert form.raw_value("lora_r") == "32" and form.raw_value("learning_rate") == "5e-05"
        assert form.config().target_modules == ["q_proj"]  # kept though the form does not show it


async def test_form_prefills_from_selected_model_and_dataset(tmp_path: Path) -> None:
    class Model:
        full_name = "qwen2.5:0.5b"

    app = make_train_app()
    async with app.run_test(size=SIZE) as pilot:
        app.selected_model = Model()
        app.selected_dataset = str(tmp_path / "chat.jsonl")
        await pilot.pause()
        form = app.query_one(RunForm)
        assert form.raw_value("model") == "ollama:qwen2.5:0.5b"
        assert form.raw_value("data") == str(tmp_path / "chat.jsonl")


async def test_log_panel_gets_python_logging_and_loglines_as_plain_text() -> None:
    app = make_train_app()
    async with app.run_test(size=SIZE) as pilot:
        await show_train(app, pilot)
        pane = app.query_one(TrainPane)
        threading.Thread(target=lambda: logging.getLogger("llamaforge_tui.core.x").warning("[bold]odd [/] text")).start()
        pane.post_message(TrainPane.EventsArrived([LogLine(level="info", message="tokenizer [red]ready")],
                                                  origin="local"))
        log = app.query_one(LogPanel)
        await wait_for(pilot, lambda: len(log.lines) >= 2, what="two log lines")
        joined = "\n".join(log.lines)
        assert "llamaforge_tui.core.x: [bold]odd [/] text" in joined and "WARNING" in joined
        assert "tokenizer [red]ready" in joined


async def test_attach_follows_an_events_file_written_from_another_thread(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "live-run"
    run_dir.mkdir(parents=True)
    (run_dir / "events.jsonl").write_text("")
    release = threading.Event()

    def writer() -> None:
        with RunLock(run_dir), EventLog(run_dir) as log:  # as the trainer: the lock says "a process trains it"
            log.append(RunStarted(run_id="live-run", run_dir=str(run_dir), config={}, source={}, total_steps=30,
                                  trainable_params=1, total_params=2))
            for step in range(1, 31):
                if step == 16:
                    release.wait(30)  # half-way: the test checks the monitor is live, mid-run
                log.append(StepLogged(step=step, total_steps=30, epoch=step / 30, loss=3.0 - step * 0.05, lr=1e-4,
                                      grad_norm=1.0, tokens_per_second=500.0, elapsed_seconds=step * 0.1,
                                      eta_seconds=(30 - step) * 0.1))
                if step % 10 == 0:
                    log.append(EvalLogged(step=step, eval_loss=3.2 - step * 0.05))
                time.sleep(0.01)
            log.append(RunFinished(step=30, total_steps=30, stopped=False, final_loss=1.5,
                                   adapter_path=str(run_dir / "adapter"), elapsed_seconds=3.0))

    thread = threading.Thread(target=writer)
    app = make_train_app(monitor_run=run_dir)
    async with app.run_test(size=SIZE) as pilot:
        thread.start()
        pane = app.query_one(TrainPane)
        chart = app.query_one(LossChart)
        assert app.query_one("#panes", TabbedContent).active == "train"
        await wait_for(pilot, lambda: pane.state.step == 15, what="the first half")
        await wait_for(pilot, lambda: len(chart.train_points) == 15, what="the chart redrawn")
        assert pane.state.status == "running" and len(chart.train_points) == 15
        assert "step 15/30" in screen_text(app)
        app.query_one("#train-start", Button).focus()
        await pilot.press("s")  # the run belongs to another process: ask it to stop through the run folder
        assert (run_dir / "stop").is_file()
        (run_dir / "stop").unlink()
        release.set()
        await wait_for(pilot, lambda: pane.state.status == "finished", what="RunFinished")
        await wait_for(pilot, lambda: len(chart.train_points) == 30, what="the chart redrawn")
        assert [p[0] for p in chart.train_points] == list(range(1, 31))
        assert [p[0] for p in chart.eval_points] == [10, 20, 30]
        await wait_for(pilot, lambda: all(part in screen_text(app) for part in
                                          ("live-run: finished", "step 30/30", "eval loss")),
                       what="the finished run on screen (title, counter, chart legend)")
        assert not app.query_one("#train-export", Button).has_class("-unavailable")
        assert pane.follow_worker is not None and pane.follow_worker.group == "monitor"
    thread.join(5)


async def test_export_request_is_posted_for_a_finished_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "done"
    with EventLog(run_dir) as log:
        log.append(RunStarted(run_id="done", run_dir=str(run_dir), config={}, source={}, total_steps=2,
                              trainable_params=1, total_params=2))
        log.append(RunFinished(step=2, total_steps=2, stopped=False, final_loss=1.0, adapter_path=None,
                               elapsed_seconds=1.0))
    messages: list = []
    app = make_train_app(monitor_run=run_dir)
    async with app.run_test(size=SIZE, message_hook=messages.append) as pilot:
        pane = app.query_one(TrainPane)
        await wait_for(pilot, lambda: pane.state.status == "finished", what="the history")
        app.query_one("#train-export", Button).focus()
        await pilot.press("e")
        await pilot.pause()
        requested = [m for m in messages if isinstance(m, TrainPane.ExportRequested)]
        assert requested and requested[0].run_dir == run_dir


def test_monitor_command_rejects_a_folder_that_is_not_a_run(tmp_path: Path, capsys) -> None:
    from llamaforge_tui.cli import main

    assert main(["monitor", str(tmp_path)]) == 1
    assert "not a run folder" in capsys.readouterr().err
    assert main(["monitor", str(tmp_path / "nope")]) == 1
    assert "no run at" in capsys.readouterr().err


async def test_runs_list_attaches_the_chosen_run(tmp_path: Path) -> None:
    settings = Settings(runs_dir=str(tmp_path / "runs"))
    run_dir = tmp_path / "runs" / "20261127-101010-tiny"
    TrainConfig(model="hf:tiny/model", data="d.jsonl").to_file(run_dir / "config.toml")
    with EventLog(run_dir) as log:
        log.append(RunStarted(run_id=run_dir.name, run_dir=str(run_dir), config={}, source={}, total_steps=3,
                              trainable_params=1, total_params=2))
        for step in (1, 2, 3):
            log.append(StepLogged(step=step, total_steps=3, epoch=1.0, loss=2.0 / step, lr=1e-4, grad_norm=1.0,
                                  tokens_per_second=10.0, elapsed_seconds=float(step), eta_seconds=0.0))
        log.append(RunFinished(step=3, total_steps=3, stopped=True, final_loss=0.66, adapter_path=None,
                               elapsed_seconds=3.0))
    app = make_app(settings, Services(gpu_sampler=two_gpus))
    async with app.run_test(size=SIZE) as pilot:
        await show_train(app, pilot)
        app.query_one("#train-side-tabs", TabbedContent).active = "train-runs-tab"
        table = app.query_one("#runs-list")
        await wait_for(pilot, lambda: table.row_count == 1, what="the run listed")
        table.focus()
        await wait_for(pilot, lambda: table.has_focus, what="the runs table focused")
        await pilot.press("enter")  # the run's details; `a` there attaches the monitor
        from llamaforge_tui.tui.screens.run_details_screen import RunDetailsScreen

        await wait_for(pilot, lambda: isinstance(app.screen, RunDetailsScreen), what="the run's details")
        await pilot.press("a")
        await wait_for(pilot, lambda: not isinstance(app.screen, RunDetailsScreen), what="the details closed")
        pane = app.query_one(TrainPane)
        await wait_for(pilot, lambda: pane.state.status == "stopped", what="the run attached")
        assert pane.attached_dir == run_dir and [p[0] for p in pane.state.train_points] == [1, 2, 3]
        assert app.query_one(RunForm).raw_value("model") == "hf:tiny/model"  # the run's config, in the form
        await wait_for(pilot, lambda: f"{run_dir.name}: stopped" in screen_text(app), what="the title")
        assert f"{run_dir.name}: stopped" in screen_text(app)
        assert not app.query_one("#train-resume", Button).has_class("-unavailable")


async def test_attach_marks_a_run_whose_process_died_as_interrupted(tmp_path: Path) -> None:
    run_dir = tmp_path / "killed"
    with EventLog(run_dir) as log:  # RunStarted and steps, then nothing: the process was killed (no lock held)
        log.append(RunStarted(run_id="killed", run_dir=str(run_dir), config={}, source={}, total_steps=9,
                              trainable_params=1, total_params=2))
        log.append(StepLogged(step=1, total_steps=9, epoch=0.1, loss=2.0, lr=1e-4, grad_norm=1.0,
                              tokens_per_second=10.0, elapsed_seconds=1.0, eta_seconds=8.0))
    app = make_train_app(monitor_run=run_dir)
    async with app.run_test(size=SIZE) as pilot:
        pane = app.query_one(TrainPane)
        await wait_for(pilot, lambda: pane.state.status == "interrupted", what="the run marked interrupted")
        await wait_for(pilot, lambda: "killed: interrupted" in screen_text(app), what="the title")
        assert "killed: interrupted" in screen_text(app)
        assert not app.query_one("#train-resume", Button).has_class("-unavailable")


async def test_loss_chart_zooms_to_the_last_steps() -> None:
    app = make_train_app()
    async with app.run_test(size=SIZE) as pilot:
        await show_train(app, pilot)
        chart = app.query_one(LossChart)
        chart.set_points([(i, 5.0 / i) for i in range(1, 301)], [(i, 4.0 / i) for i in range(10, 301, 10)])
        app.query_one("#train-start", Button).focus()
        assert chart.zoom is None
        await pilot.press("z")
        assert chart.zoom == 50
        assert [p[0] for p in visible(chart.train_points, chart.zoom, chart.last_step)] == list(range(251, 301))
        await wait_for(pilot, lambda: "last 50 steps" in screen_text(app), what="the zoomed chart")
        text = screen_text(app)
        assert "251" in text and "300" in text and "eval loss" in text  # x axis starts at the window
        for _ in range(3):
            await pilot.press("z")
        assert chart.zoom is None


def test_downsample_averages_runs_of_points_in_order() -> None:
    points = [(i, float(i % 2)) for i in range(1, 1001)]  # a loss that alternates 0, 1
    out = downsample(points, 100)
    assert len(out) == 100
    assert [p[0] for p in out] == sorted(p[0] for p in out) and out[0][0] <= 10 and out[-1][0] >= 990
    assert all(abs(p[1] - 0.5) < 1e-9 for p in out)  # each run of 10 averages to 0.5
    assert downsample(points[:50], 100) == points[:50]  # fewer points than columns: unchanged
    assert downsample(points, 0) == points  # no width known yet: all of them


async def test_long_history_is_drawn_downsampled_with_the_true_latest_value() -> None:
    app = make_train_app()
    async with app.run_test(size=SIZE) as pilot:
        await show_train(app, pilot)
        chart = app.query_one(LossChart)
        chart.set_points([(i, 5.0 / i) for i in range(1, 20001)] + [(20001, 0.1234)], [])
        await wait_for(pilot, lambda: chart.drawn_step == 20001, what="the long history drawn")
        await wait_for(pilot, lambda: "latest 0.1234" in screen_text(app), what="the latest loss in the title")
        ticks = [float(t) for t in re.findall(r"\b\d+\.\d\b", screen_text(app))]
        assert ticks and max(ticks) > 19_000  # the x axis reaches the end of the run
        # Drawing 20k points' worth stays cheap, and the redraw interval keeps the chart inside its budget.
        assert chart.redraw_interval >= chart.render_seconds / RENDER_BUDGET


async def test_chart_redraws_are_spaced_by_their_cost() -> None:
    app = make_train_app()
    async with app.run_test(size=SIZE) as pilot:
        await show_train(app, pilot)
        chart = app.query_one(LossChart)
        saved = chart.render_seconds
        chart.render_seconds = 0.1  # as if a draw took 100 ms: 5 s between redraws at a 2% budget
        assert chart.redraw_interval == pytest.approx(0.1 / RENDER_BUDGET)
        chart.render_seconds = 0.0
        assert chart.redraw_interval == 1.0  # cheap draws: the configured interval
        chart.render_seconds = saved
        chart._redraw_interval = 5.0  # the spacing itself, with a long interval (renders can't shorten it)
        chart.set_points([(1, 2.0)], [])
        chart._replot()  # drawn just now
        drawn = chart.redraws
        chart.set_points([(1, 2.0), (2, 1.5)], [])  # too soon after the last draw: only marked dirty
        await pilot.pause(1.5)
        assert chart.redraws == drawn and chart.drawn_step <= 1
