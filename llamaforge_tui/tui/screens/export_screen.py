"""The Export view: options, a progress bar, the verification table and the registration status.

Reached from a finished run (the Train pane posts ``TrainPane.ExportRequested``). The export itself is the
core's blocking ``export_run`` in a thread worker; progress comes back as messages. "Compare" measures the KL
of several outputs (F16, Q8_0, hybrid, adapter, Q4_K_M...) against one reference, so the user picks a 4-bit
option with numbers. Tests replace the core calls through ``app.services.extra``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Checkbox, DataTable, Footer, Header, Input, Label, ProgressBar, Select, Static
from textual.worker import get_current_worker

from llamaforge_tui.core.errors import LlamaForgeError
from llamaforge_tui.core.export.exporter import EXPORT_TYPES, ExportOptions, ExportProgress, ExportResult, VerificationFailed
from llamaforge_tui.core.export.verify import Verification, has_llama_cpp

COMPARE_CHOICES = ("f16", "q8_0", "hybrid", "adapter", "q4_k_m")
QUANTIZED_RUN_NOTE = (
    "This run trained on the quantized GGUF (gguf-quantized). The adapter GGUF applies your fine-tune to the "
    "unchanged Ollama model: a few MB, and exactly what was trained. A merged export dequantizes the base, adds "
    "the LoRA and quantizes again: one file that works on every Ollama version, at the cost of a second round of "
    "quantization noise (use Compare to see the KL of each)."
)


def _fmt_kl(value: float) -> str:
    return f"{value:.2e}" if value == value else "N/A"


class ConfirmReplace(ModalScreen[bool]):
    """Asked when the Ollama name is taken."""

    DEFAULT_CSS = """
    ConfirmReplace { align: center middle; }
    ConfirmReplace > Vertical { width: 60; height: auto; padding: 1 2; border: thick $warning; background: $surface; }
    ConfirmReplace Horizontal { height: auto; margin-top: 1; align-horizontal: right; }
    ConfirmReplace Button { margin-left: 2; }
    """
    BINDINGS = [Binding("y", "answer(True)", "Replace", id="export.replace_yes"),
                Binding("n,escape", "answer(False)", "Keep", id="export.replace_no")]

    def __init__(self, name: str) -> None:
        super().__init__()
        self.model_name = name

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(Text(f"An Ollama model named {self.model_name} already exists. Replace it?"))
            with Horizontal():
                yield Button(Text("Keep it [n]"), id="replace-no", variant="primary")
                yield Button(Text("Replace [y]"), id="replace-yes", variant="warning")

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id == "replace-yes")


class ExportScreen(Screen[None]):
    BINDINGS = [
        Binding("ctrl+e", "export", "Export", id="export.start"),
        Binding("ctrl+k", "compare", "Compare choices", id="export.compare"),
        Binding("escape", "close", "Back", id="export.close"),
    ]

    class Progress(Message):
        def __init__(self, progress: ExportProgress) -> None:
            super().__init__()
            self.progress = progress

    class Finished(Message):
        def __init__(self, result: ExportResult | None, error: str | None = None, clash: str | None = None) -> None:
            super().__init__()
            self.result = result
            self.error = error
            self.clash = clash

    class Compared(Message):
        def __init__(self, rows: list[Verification], error: str | None = None) -> None:
            super().__init__()
            self.rows = rows
            self.error = error

    def __init__(self, run_dir: Path | str) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.result: ExportResult | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="export-body"):
            yield Static(Text(f"Export run {self.run_dir}"), id="export-title", markup=False)
            with Horizontal(id="export-options"):
                yield Select([(t, t) for t in EXPORT_TYPES], value="auto", allow_blank=False, id="export-type")
                yield Input(placeholder="Ollama name (default from the run)", id="export-name")
                yield Input(placeholder="output folder (default RUN/export)", id="export-out")
            with Horizontal(id="export-flags"):
                yield Checkbox("LoRA adapter GGUF", id="export-adapter")
                yield Checkbox("verify in llama.cpp", value=has_llama_cpp(), id="export-verify")
                yield Checkbox("register with Ollama", id="export-register")
                yield Button("Export", id="export-start", variant="primary")
                yield Button("Compare choices", id="export-compare")
            yield Static(Text("For 4-bit results prefer the adapter or hybrid: requantizing the merge wipes much "
                              "of a small fine-tune. Ollama's ADAPTER support varies; the merged GGUF is the "
                              "safe default."), id="export-hint", markup=False)
            yield Static(Text(QUANTIZED_RUN_NOTE), id="export-quantized-note", markup=False)
            yield ProgressBar(total=100, show_eta=False, id="export-progress")
            yield Static("", id="export-status", markup=False)
            yield DataTable(id="export-verification", cursor_type="row")
            yield Static("", id="export-parts", markup=False)
            yield Static("", id="export-sample", markup=False)
            yield Static("", id="export-registration", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        from llamaforge_tui.core.train.runs import read_source

        quantized = read_source(self.run_dir).get("weights") == "gguf-quantized"
        self.query_one("#export-quantized-note", Static).display = quantized
        if quantized:  # the faithful choice for such a run
            self.query_one("#export-adapter", Checkbox).value = True
        table = self.query_one("#export-verification", DataTable)
        table.add_columns("choice", "top-1", "mean KL", "max KL", "positions", "result")
        self.query_one("#export-start", Button).focus()

    # -- actions ------------------------------------------------------------------------------------
    def _options(self, force: bool = False) -> ExportOptions:
        out = self.query_one("#export-out", Input).value.strip()
        return ExportOptions(
            out_type=str(self.query_one("#export-type", Select).value),
            adapter=self.query_one("#export-adapter", Checkbox).value,
            name=self.query_one("#export-name", Input).value.strip() or None,
            register=self.query_one("#export-register", Checkbox).value,
            verify=self.query_one("#export-verify", Checkbox).value,
            out_dir=Path(out) if out else None, force=force)

    def _set_busy(self, busy: bool) -> None:
        self.query_one("#export-start", Button).disabled = busy
        self.query_one("#export-compare", Button).disabled = busy
        self.set_class(busy, "-busy")

    @on(Button.Pressed, "#export-start")
    def action_export(self) -> None:
        self._start(force=False)

    @on(Button.Pressed, "#export-compare")
    def action_compare(self) -> None:
        self._set_busy(True)
        self.query_one("#export-status", Static).update(Text("measuring each choice against the merged model..."))
        self._compare_worker()

    def action_close(self) -> None:
        self.workers.cancel_group(self, "export")
        self.app.pop_screen()

    def _start(self, force: bool) -> None:
        self._set_busy(True)
        self.query_one("#export-registration", Static).update("")
        self._export_worker(self._options(force))

    # -- workers ------------------------------------------------------------------------------------
    def _service(self, name: str, default: Any) -> Any:
        services = getattr(self.app, "services", None)
        return (getattr(services, "extra", None) or {}).get(name, default)

    @work(thread=True, group="export", name="export", description="Export", exit_on_error=False)
    def _export_worker(self, options: ExportOptions) -> None:
        from llamaforge_tui.core.export.exporter import export_run
        from llamaforge_tui.core.ollama.register import NameClash

        worker = get_current_worker()
        run = self._service("export_run", export_run)
        try:
            result = run(self.run_dir, options, getattr(self.app, "settings", None),
                         progress=lambda p: self.post_message(self.Progress(p)), stop_event=worker.cancelled_event)
        except NameClash as exc:
            self.post_message(self.Finished(None, str(exc), clash=exc.name))
        except VerificationFailed as exc:
            self.post_message(self.Finished(exc.result, str(exc)))
        except LlamaForgeError as exc:
            self.post_message(self.Finished(None, str(exc)))
        else:
            self.post_message(self.Finished(result))

    @work(thread=True, group="export", name="export-compare", description="Compare export choices", exit_on_error=False)
    def _compare_worker(self) -> None:
        from llamaforge_tui.core.export.compare import measure_choices

        worker = get_current_worker()
        measure = self._service("measure_choices", measure_choices)
        try:
            rows = measure(self.run_dir, list(COMPARE_CHOICES), getattr(self.app, "settings", None),
                           progress=lambda p: self.post_message(self.Progress(p)), stop_event=worker.cancelled_event)
        except LlamaForgeError as exc:
            self.post_message(self.Compared([], str(exc)))
        else:
            self.post_message(self.Compared(rows))

    # -- messages -----------------------------------------------------------------------------------
    def on_export_screen_progress(self, message: Progress) -> None:
        p = message.progress
        bar = self.query_one("#export-progress", ProgressBar)
        if p.total:
            bar.update(total=p.total, progress=p.done)
        if p.phase == "register":
            self.query_one("#export-registration", Static).update(Text(f"Ollama: {p.message}"))
        elif p.phase != "write" or not p.total:
            self.query_one("#export-status", Static).update(Text(f"{p.phase}: {p.message}"))

    def _add_row(self, v: Verification) -> None:
        table = self.query_one("#export-verification", DataTable)
        verdict = "passed" if v.passed and not v.warnings else ("warning" if v.passed else "FAILED")
        table.add_row(Text(v.label or v.gate), f"{v.top1_agreement:.1%}", _fmt_kl(v.mean_kl), _fmt_kl(v.max_kl),
                      str(v.positions), Text(verdict))
        for name, part in v.parts.items():  # Q8_0 files, adapters on quantized sources: in parts
            table.add_row(Text(f"  {name}"), f"{part.top1_agreement:.1%}", _fmt_kl(part.mean_kl), "", "",
                          Text("ok" if part.passed else "FAILED"))
        if v.parts:
            lines = [f"{name}: {part.what} (gate top-1 >= {part.min_top1:.0%}, mean KL <= {part.max_kl:.1e})"
                     for name, part in v.parts.items()]
            if v.effect_kl is not None:
                lines.append(f"the fine-tune's own effect on these prompts: mean KL {_fmt_kl(v.effect_kl)}")
            if v.buffer_types:
                lines.append(f"llama.cpp weight buffers: {', '.join(v.buffer_types)}")
            lines += v.notes
            self.query_one("#export-parts", Static).update(Text("\n".join(lines)))

    def on_export_screen_finished(self, message: Finished) -> None:
        self._set_busy(False)
        status = self.query_one("#export-status", Static)
        if message.clash:
            def answer(replace: bool | None) -> None:
                if replace:
                    self._start(force=True)
                else:
                    status.update(Text(f"not registered: {message.clash} exists"))
            self.app.push_screen(ConfirmReplace(message.clash), answer)
            return
        result = message.result
        self.result = result
        if result is not None and result.verification is not None:
            self._add_row(result.verification)
            s = result.verification.sample
            if s is not None:
                self.query_one("#export-sample", Static).update(
                    Text(f"prompt:    {s.prompt}\nexpected:  {s.expected}\ngenerated: {s.generated}"))
        if message.error:
            status.update(Text(f"error: {message.error}"))
            self.set_class(True, "-failed")
            return
        self.set_class(False, "-failed")
        assert result is not None
        path = result.gguf_path or result.adapter_path
        status.update(Text(f"wrote {path} and {result.modelfile_path}"))
        reg = self.query_one("#export-registration", Static)
        if result.registered_as:
            reg.update(Text(f"registered as {result.registered_as}: ollama run {result.registered_as}"))
        else:
            reg.update(Text(f"to use it in Ollama: {result.create_command}"))

    def on_export_screen_compared(self, message: Compared) -> None:
        self._set_busy(False)
        for row in message.rows:
            self._add_row(row)
        status = self.query_one("#export-status", Static)
        status.update(Text(f"error: {message.error}" if message.error else
                           f"measured {len(message.rows)} choices against the merged PyTorch model"))
