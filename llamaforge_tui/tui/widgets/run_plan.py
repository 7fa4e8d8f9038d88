"""Before a run starts: how much memory it needs against what is free, how many steps, and a rough ETA.

Planning reads the dataset (and, when the memory estimator is available, the model's header), so it
runs in a thread worker, debounced: typing in the form re-plans half a second after the last key.
The ETA is deliberately rough: seconds per step of the latest run of the same model, scaled by the
batch; with no such run it says it will know after the first steps rather than inventing a number.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import work
from textual.message import Message
from textual.timer import Timer
from textual.widgets import Static

from llamaforge_tui.core.errors import LlamaForgeError
from llamaforge_tui.core.fsutil import human_bytes
from llamaforge_tui.core.settings import Settings
from llamaforge_tui.core.train.config import TrainConfig
from llamaforge_tui.tui.widgets.run_state import format_duration


@dataclass(frozen=True)
class Plan:
    examples: int | None = None
    steps_per_epoch: int | None = None
    total_steps: int | None = None
    eta_seconds: float | None = None
    memory_total: int | None = None
    memory_free: int | None = None
    memory_kind: str = "RAM"
    fits: bool | None = None
    notes: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        out = []
        if self.examples is not None:
            out.append(f"{self.examples} examples -> {self.steps_per_epoch} steps/epoch, {self.total_steps} steps")
        eta = format_duration(self.eta_seconds) if self.eta_seconds is not None else "known after the first steps"
        out.append(f"rough ETA: {eta}")
        if self.memory_total is not None:
            free = human_bytes(self.memory_free) if self.memory_free is not None else "N/A"
            verdict = {True: "fits", False: "WILL NOT FIT", None: "?"}[self.fits]
            out.append(f"memory ~{human_bytes(self.memory_total)} vs {free} free {self.memory_kind}: {verdict}")
        out.extend(self.notes)
        return out


def make_plan(config: TrainConfig, settings: Settings, free: tuple[str, int | None]) -> Plan:
    """Steps, rough ETA and memory for ``config``. Blocking (reads the dataset); call it from a thread."""
    notes: list[str] = []
    examples = steps_epoch = total = None
    if config.data:
        try:
            from llamaforge_tui.core.data.dataset import load_dataset, steps_per_epoch

            loaded = load_dataset(config.data, format=config.data_format, policy="skip")
            examples = max(1, int(loaded.valid * (1.0 - config.eval_split)))
            steps_epoch = steps_per_epoch(examples, config.batch_size, config.grad_accum)
            total = config.max_steps or max(1, math.ceil(steps_epoch * config.epochs))
            if loaded.invalid:
                notes.append(f"{loaded.invalid} invalid record(s) will be skipped")
        except LlamaForgeError as exc:
            notes.append(f"dataset: {exc}")
    kind, free_bytes = free
    memory_total = None
    fits = None
    estimate = _memory_estimate(config, settings, free)
    if isinstance(estimate, str):
        notes.append(estimate)
    elif estimate is not None:
        memory_total = int(estimate.total)
        fits = estimate.fits
        breakdown = (f"weights {human_bytes(estimate.weights)}, LoRA {human_bytes(estimate.lora)}, "
                     f"optimizer {human_bytes(estimate.optimizer)}, activations {human_bytes(estimate.activations)}")
        notes.append(breakdown)
        if fits is False:
            notes.extend(str(tip) for tip in estimate.advice)
    eta = _eta_from_history(config, settings, total)
    return Plan(examples, steps_epoch, total, eta, memory_total, free_bytes, kind, fits, tuple(notes))


def _memory_estimate(config: TrainConfig, settings: Settings, free: tuple[str, int | None]) -> Any:
    """The core's estimate (``core.memory``) from the model's hyper-parameters, or a note why there is none.

    Only headers are read (the GGUF's KV or the HF folder's config.json): nothing is downloaded or loaded.
    """
    if not config.model:
        return None
    try:
        from llamaforge_tui.core.model.memory import estimate_memory
        from llamaforge_tui.core.model.sources import resolve_source
    except ImportError:
        return "memory estimate: not available in this version"
    kind, free_bytes = free
    try:
        resolved = resolve_source(config.model, settings, config.weights, download=False)
        weights_bytes = None
        if resolved.gguf_path is not None and resolved.uses_gguf:
            from llamaforge_tui.core.gguf.arch import config_dict_from_gguf
            from llamaforge_tui.core.gguf.file import GgufFile

            with GgufFile(resolved.gguf_path) as gguf:
                model_config: Any = config_dict_from_gguf(gguf)
                if config.weights == "gguf-quantized":
                    weights_bytes = gguf.file_size
        elif resolved.model_dir is not None:
            model_config = json.loads((Path(resolved.model_dir) / "config.json").read_text(encoding="utf-8"))
        else:
            return None
        on_gpu = kind == "VRAM" and config.device != "cpu"
        dtype = config.dtype if config.dtype != "auto" else ("bfloat16" if on_gpu else "float32")
        return estimate_memory(model_config, dtype=dtype, device="cuda" if on_gpu else "cpu",
                               batch_size=config.batch_size, seq_len=config.max_seq_len, lora_rank=config.lora_r,
                               weights_bytes=weights_bytes, gradient_checkpointing=config.gradient_checkpointing,
                               free=free_bytes)
    except (LlamaForgeError, OSError, ValueError, KeyError) as exc:
        return f"memory estimate: {exc}"


def _eta_from_history(config: TrainConfig, settings: Settings, total: int | None) -> float | None:
    if not total:
        return None
    from llamaforge_tui.core.train.events import EventReader, RunStarted, StepLogged
    from llamaforge_tui.core.train.runs import list_runs

    for run in list_runs(settings):
        if run.source != config.model or run.step < 2:
            continue
        events = EventReader(run.path).poll()
        steps = [e for e in events if isinstance(e, StepLogged)]
        started = next((e for e in events if isinstance(e, RunStarted)), None)
        if len(steps) < 2:
            continue
        per_step = (steps[-1].elapsed_seconds - steps[0].elapsed_seconds) / max(1, steps[-1].step - steps[0].step)
        if per_step <= 0:
            continue
        old = started.config if started is not None else {}
        old_batch = int(old.get("batch_size", config.batch_size)) * int(old.get("grad_accum", config.grad_accum))
        scale = (config.batch_size * config.grad_accum) / max(1, old_batch)
        return per_step * scale * total
    return None


class RunPlan(Static):
    """Shows the plan for the form's current config; re-planned (debounced) when the form changes."""

    class Planned(Message):
        def __init__(self, plan: Plan) -> None:
            super().__init__()
            self.plan = plan

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("", id=id, markup=False)
        self.plan: Plan | None = None
        self._timer: Timer | None = None

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
        self.post_message(self.Planned(make_plan(config, self.app.settings, free)))

    def on_run_plan_planned(self, message: Planned) -> None:
        message.stop()
        self.plan = message.plan
        self.set_class(message.plan.fits is False, "-wont-fit")
        self.update(Text("\n".join(message.plan.lines())))
