"""Before a run starts: how much memory it needs against what is free, how many steps, and a rough ETA.

The plan itself is the core's (``core.train.plan``): it tokenizes the data as the trainer will, so the steps
and the memory estimate follow the data's real lengths. It runs in a thread worker, debounced: typing in the
form re-plans half a second after the last key. The tokenizer is kept between plans of the same model.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import work
from textual.message import Message
from textual.timer import Timer
from textual.widgets import Static

from llamaforge_tui.core.train.config import TrainConfig
from llamaforge_tui.core.train.plan import TrainPlan, plan_run


class RunPlan(Static):
    """Shows the plan for the form's current config; re-planned (debounced) when the form changes."""

    class Planned(Message):
        def __init__(self, plan: TrainPlan) -> None:
            super().__init__()
            self.plan = plan

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("", id=id, markup=False)
        self.plan: TrainPlan | None = None
        self._timer: Timer | None = None
        self._tokenizers: dict[tuple[str, str], Any] = {}  # only the worker (exclusive) touches it

    def schedule(self, form: Any, gauges: Any, delay: float = 0.5) -> None:
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_timer(delay, lambda: self._replan(form, gauges))

    def _replan(self, form: Any, gauges: Any) -> None:
        config = form.config(require_inputs=False)
        if config is None:
            self.update(Text("fix the marked fields to see the plan"))
            return
        self._plan(config, gauges.free_accelerator_bytes)

    @work(thread=True, group="plan", name="plan-run", description="Estimate steps, ETA and memory",
          exclusive=True, exit_on_error=False)
    def _plan(self, config: TrainConfig, free: tuple[str, int | None]) -> None:
        self.post_message(self.Planned(plan_run(config, self.app.settings, free=free, tokenizers=self._tokenizers)))

    def on_run_plan_planned(self, message: Planned) -> None:
        message.stop()
        self.plan = message.plan
        self.set_class(message.plan.fits is False, "-wont-fit")
        self.update(Text("\n".join(message.plan.lines())))
