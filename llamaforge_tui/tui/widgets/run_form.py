"""The run form: the settings of a training run, each validated as it is typed, message beside it.

The form edits a ``TrainConfig`` (the same object and file format the CLI uses). Fields not shown in
the form (target modules, dtype...) are kept from the config last loaded, so loading a hand-written
config, changing the learning rate and saving it again loses nothing.
Validation reuses ``TrainConfig`` itself: a field is checked by building a config with just that field
changed, so the form can never disagree with the CLI about what is valid.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import events, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Button, Input, Label, Select, Static
from textual.worker import get_current_worker

from llamaforge_tui.core.errors import LlamaForgeError
from llamaforge_tui.core.train.config import (
    DTYPES,
    SCHEDULERS,
    WEIGHT_TRADEOFFS,
    WEIGHTS,
    TrainConfig,
)
from llamaforge_tui.core.train.device import describe_plan, plan_device

# (field name, label, help shown as the placeholder). Order is the form's order.
FIELDS: tuple[tuple[str, str, str], ...] = (
    ("model", "Source", "ollama:NAME[:TAG], hf:ORG/NAME, file.gguf or HF folder"),
    ("weights", "Weights", ""),
    ("data", "Dataset", "path to a JSONL/JSON/CSV/TXT file"),
    ("lora_r", "LoRA r", "rank, e.g. 16"),
    ("lora_alpha", "LoRA alpha", "e.g. 32"),
    ("lora_dropout", "LoRA dropout", "0 to <1"),
    ("learning_rate", "Learning rate", "e.g. 2e-4"),
    ("scheduler", "Schedule", ""),
    ("warmup_steps", "Warmup steps", "empty: 3% of the steps"),
    ("epochs", "Epochs", "e.g. 1"),
    ("max_steps", "Max steps", "empty: run the epochs"),
    ("batch_size", "Batch size", "micro-batch"),
    ("grad_accum", "Grad accum", "steps per optimizer update"),
    ("max_seq_len", "Max seq len", "tokens per example"),
    ("eval_split", "Eval split", "fraction held out, e.g. 0.05"),
    ("save_every", "Save every", "steps between checkpoints"),
    ("seed", "Seed", ""),
    ("device", "Device", "auto, cpu, cuda, cuda:N or mps"),
    ("dtype", "Precision", ""),
)
LABELS = {name: label for name, label, _ in FIELDS}
CHOICES: dict[str, tuple[str, ...]] = {"weights": WEIGHTS, "scheduler": SCHEDULERS, "dtype": DTYPES}
_HINTS = typing.get_type_hints(TrainConfig)


def _text_of(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def parse_field(name: str, text: str) -> Any:
    """Form text -> the field's Python value; raises ValueError with a short reason."""
    hint = _HINTS[name]
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if optional else hint
    text = text.strip()
    if not text:
        if optional:
            return None
        if base is str:
            return ""
        raise ValueError("required")
    if base is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError("must be a whole number") from None
    if base is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError("must be a number") from None
    return text


def field_error(name: str, value: Any) -> str | None:
    """Why ``value`` is not valid for ``name`` (per TrainConfig's own rules), or None."""
    try:
        TrainConfig(**{name: value})
    except LlamaForgeError as exc:
        return str(exc).removeprefix("invalid training config: ")
    if name == "data" and value and not Path(value).expanduser().is_file():
        return "no such file"
    if name == "model" and value:
        return _source_error(value)
    return None


def _source_error(text: str) -> str | None:
    try:
        from llamaforge_tui.core.model.sources import parse_source
    except ImportError:  # the sources module is not there: accept anything non-empty
        return None
    try:
        parse_source(text)
    except LlamaForgeError as exc:
        return str(exc)
    return None


class RunForm(VerticalScroll):
    """Edits a TrainConfig. ``config()`` returns it, or None (with messages shown) when a field is bad."""

    class Changed(Message):
        """Some field changed (the pane re-plans: memory estimate, steps, ETA)."""

    class DeviceChosen(Message):
        """Which device and precision the device/dtype settings give here, and why (``device.plan_device``)."""

        def __init__(self, plan: dict[str, str]) -> None:
            super().__init__()
            self.plan = plan

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.base = TrainConfig()
        self.errors: dict[str, str] = {}

    def compose(self) -> ComposeResult:
        for name, label, placeholder in FIELDS:
            with Vertical(classes="form-field", id=f"field-{name}"):
                with Horizontal(classes="form-row"):
                    yield Label(Text(label), classes="form-label")
                    if name in CHOICES:
                        yield Select([(c, c) for c in CHOICES[name]], value=getattr(self.base, name),
                                     allow_blank=False, id=f"in-{name}", classes="form-input")
                    else:
                        yield Input(_text_of(getattr(self.base, name)), placeholder=placeholder,
                                    id=f"in-{name}", classes="form-input")
                yield Static("", classes="form-error", id=f"err-{name}", markup=False)
                if name == "weights":
                    yield Static(WEIGHT_TRADEOFFS[self.base.weights], classes="form-hint", id="hint-weights",
                                 markup=False)
                if name == "dtype":
                    yield Static("", classes="form-hint", id="hint-device", markup=False)

    # -- values ------------------------------------------------------------------------------------
    def raw_value(self, name: str) -> str:
        widget = self.query_one(f"#in-{name}")
        if isinstance(widget, Select):
            return str(widget.value)
        assert isinstance(widget, Input)
        return widget.value

    def set_value(self, name: str, value: Any) -> None:
        widget = self.query_one(f"#in-{name}")
        if isinstance(widget, Select):
            widget.value = value
        else:
            assert isinstance(widget, Input)
            widget.value = _text_of(value)
        self.validate_field(name)

    def load_config(self, config: TrainConfig) -> None:
        """Show ``config``; fields the form does not show are kept from it."""
        self.base = config
        for name, _, _ in FIELDS:
            self.set_value(name, getattr(config, name))

    def validate_field(self, name: str, *, require: bool = False) -> Any:
        message: str | None
        value: Any = None
        try:
            value = parse_field(name, self.raw_value(name))
            message = field_error(name, value)
        except ValueError as exc:
            message = str(exc)
        if message is None and require and name in ("model", "data") and not value:
            message = "required"
        self._show_error(name, message)
        return value

    def _show_error(self, name: str, message: str | None) -> None:
        if self.errors.get(name) == message or (message is None and name not in self.errors):
            return  # unchanged: no restyle, no layout pass
        error = self.query_one(f"#err-{name}", Static)
        if message:
            self.errors[name] = message
            error.update(Text(message))
        else:
            self.errors.pop(name, None)
            error.update("")
        error.set_class(bool(message), "-shown")
        self.query_one(f"#field-{name}").set_class(bool(message), "-invalid")

    def config(self, *, require_inputs: bool = True) -> TrainConfig | None:
        """The config in the form, or None when a field is invalid (its message is shown)."""
        values = {name: self.validate_field(name, require=require_inputs) for name, _, _ in FIELDS}
        if self.errors:
            return None
        try:
            return dataclasses.replace(self.base, **values)
        except LlamaForgeError as exc:  # a rule across fields
            self._show_error("model", str(exc))
            return None

    # A "▸" marks the focused field's label: over SSH, with few colours, focus must show as text too.
    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        self._mark_focus(event.widget, True)

    def on_descendant_blur(self, event: events.DescendantBlur) -> None:
        self._mark_focus(event.widget, False)

    def _mark_focus(self, widget: Widget, focused: bool) -> None:
        field = next((node for node in widget.ancestors_with_self if node.has_class("form-field")), None)
        if field is None or not field.id:
            return
        name = field.id.removeprefix("field-")
        field.query_one(".form-label", Label).update(Text(("▸ " if focused else "") + LABELS[name]))

    def on_input_changed(self, event: Input.Changed) -> None:
        self._changed(event.input.id)

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "in-weights":
            self.query_one("#hint-weights", Static).update(WEIGHT_TRADEOFFS.get(str(event.value), ""))
        self._changed(event.select.id)

    def _changed(self, widget_id: str | None) -> None:
        if widget_id and widget_id.startswith("in-"):
            self.validate_field(widget_id[3:])
            self.post_message(self.Changed())
            if widget_id in ("in-device", "in-dtype") and self.device_plan is not None:
                self.choose_device()

    # -- which device and precision, and why --------------------------------------------------------
    device_plan: dict[str, str] | None = None

    def on_show(self) -> None:
        if self.device_plan is None:  # first shown: probe then (torch loads in the worker, not at app start)
            self.choose_device()

    def choose_device(self) -> None:
        device, dtype = self.raw_value("device").strip(), self.raw_value("dtype")
        if "device" in self.errors:
            self.query_one("#hint-device", Static).update("")
            return
        self._probe_device(device or "auto", dtype)

    @work(thread=True, group="device-probe", name="device-probe", exclusive=True, exit_on_error=False,
          description="Which device and precision a run would use, and why")
    def _probe_device(self, device: str, dtype: str) -> None:
        plan = plan_device(device, dtype)
        if not get_current_worker().is_cancelled:  # a newer choice replaced this one: its plan is stale
            self.post_message(self.DeviceChosen(plan))

    def on_run_form_device_chosen(self, message: DeviceChosen) -> None:
        self.device_plan = message.plan
        hint = self.query_one("#hint-device", Static)
        hint.update(Text(describe_plan(message.plan)))
        hint.set_class("error" in message.plan, "-invalid")


class ConfigFileBar(Horizontal):
    """Save the form to / load it from a config file, in the CLI's format (TOML, or YAML by extension)."""

    def compose(self) -> ComposeResult:
        yield Input(placeholder="config file (.toml/.yaml)", id="config-path")
        yield Button("Save", id="config-save")
        yield Button("Load", id="config-load")

    @property
    def form(self) -> RunForm:
        return self.screen.query_one(RunForm)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        path = self.query_one("#config-path", Input).value.strip()
        if not path:
            self.notify("Give a config file name first.", severity="error")
            return
        if event.button.id == "config-save":
            self._save(Path(path).expanduser())
        else:
            self._load(Path(path).expanduser())

    def _save(self, path: Path) -> None:
        config = self.form.config(require_inputs=False)
        if config is None:
            self.notify("Fix the marked fields first.", title="Not saved", severity="error")
            return
        try:
            written = config.to_file(path)
        except (LlamaForgeError, OSError) as exc:
            self.notify(str(exc), title="Not saved", severity="error", markup=False)
            return
        self.notify(str(written), title="Config saved", markup=False)

    def _load(self, path: Path) -> None:
        try:
            config = TrainConfig.from_file(path)
        except LlamaForgeError as exc:
            self.notify(str(exc), title="Not loaded", severity="error", markup=False)
            return
        self.form.load_config(config)
        self.notify(str(path), title="Config loaded", markup=False)
