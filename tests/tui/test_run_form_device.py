"""The Train form's Device and Precision fields: the hint says what a run would use here and why (this CPU
machine for real), and a setting this machine cannot run says so before any run starts."""

from __future__ import annotations

import pytest
from textual.widgets import Static

from llamaforge_tui.core.settings import Settings
from llamaforge_tui.core.system import GpuUnavailable
from llamaforge_tui.core.train.device import plan_device
from llamaforge_tui.tui.app import Services, make_app
from llamaforge_tui.tui.widgets.run_form import RunForm
from train_helpers import screen_text, show_train, wait_for


def _hint(form: RunForm) -> str:
    return str(form.query_one("#hint-device", Static).render())


@pytest.mark.parametrize("size", [(120, 40), (80, 24)])
async def test_device_hint_on_this_machine_and_impossible_settings(size: tuple[int, int]) -> None:
    app = make_app(Settings(), Services(gpu_sampler=lambda: GpuUnavailable("no GPU")))
    async with app.run_test(size=size) as pilot:
        await show_train(app, pilot)
        form = app.query_one(RunForm)
        await wait_for(pilot, lambda: form.device_plan is not None, what="the device probe")
        assert form.device_plan == plan_device("auto", "auto")  # the form says what a run would do
        here = form.device_plan["device"]
        if here == "cpu":  # this machine
            assert _hint(form).startswith("-> cpu (auto: no CUDA or ROCm GPU is visible, so the CPU); ")
        form.query_one("#hint-device").scroll_visible(animate=False)
        await pilot.pause(0.1)
        assert f"-> {here} (auto:" in screen_text(app)

        if "error" in plan_device("mps"):
            form.set_value("device", "mps")  # not a Mac: refused, with the cause
            await wait_for(pilot, lambda: "error" in (form.device_plan or {}), what="the mps refusal")
            assert _hint(form).startswith("cannot run: device mps requested but ")
            assert form.query_one("#hint-device").has_class("-invalid")

        form.set_value("device", "cpu")
        form.set_value("dtype", "float16")
        await wait_for(pilot, lambda: "float16 needs a GPU" in _hint(form), what="the fp16 refusal")
        form.set_value("dtype", "float32")
        await wait_for(pilot, lambda: _hint(form) == "-> cpu (cpu: as set); float32 (float32: as set)",
                       what="the plain CPU plan")
        assert not form.query_one("#hint-device").has_class("-invalid")
        config = form.config(require_inputs=False)
        assert config is not None and (config.device, config.dtype) == ("cpu", "float32")

        form.set_value("device", "tpu")  # TrainConfig's own rule: a field error, and no probe for it
        assert "mps" in form.errors["device"]
