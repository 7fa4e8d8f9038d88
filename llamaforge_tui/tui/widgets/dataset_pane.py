"""The Dataset pane: pick a file, see its records, one rendered as the model sees it, stats and errors.

The preview (first records) loads at once in a worker; the full pass (validation and token stats over
the whole file, streamed) runs in a second, cancellable worker with progress. The model used for
rendering is the one selected in the Models pane (``app.selected_model``) unless a source is typed.
All file and model text is shown as plain text: Content/Text objects, never markup.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widget import Widget
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.message import Message
from textual.widgets import DataTable, Input, Label, ProgressBar, Static
from textual.worker import Worker, WorkerState, get_current_worker

from llamaforge_tui.core.fsutil import safe_text
from llamaforge_tui.core.data.dataset import (
    DatasetLoad,
    StatsScan,
    load_dataset,
    record_preview,
    render_for_display,
    scan_token_stats,
    steps_per_epoch,
)
from llamaforge_tui.core.model.render_context import RenderContext, build_render_context, source_text
from llamaforge_tui.core.data.records import Record
from llamaforge_tui.core.errors import LlamaForgeError
from llamaforge_tui.tui.widgets.dataset_view import PathSuggester, raw_content, rendered_content

PREVIEW_LIMIT = 500
MAX_ERRORS_SHOWN = 1000
DEFAULT_MAX_SEQ_LEN = 2048


class _CancelFlag:
    """The stop_event interface for the core, backed by the worker's cancellation."""

    def __init__(self, worker: Worker[Any]) -> None:
        self.worker = worker

    def is_set(self) -> bool:
        return self.worker.is_cancelled


class DatasetPane(Vertical):
    BINDINGS = [
        Binding("o", "open", "Open file", id="dataset.open"),
        Binding("ctrl+r", "reload", "Reload", id="dataset.reload"),
        Binding("ctrl+k", "stop_scan", "Stop scan", id="dataset.stop_scan"),
    ]

    class ModelSelected(Message):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

    class DatasetSelected(Message):
        """A dataset loaded; the app keeps its path in ``selected_dataset`` (the Train pane uses it)."""

        def __init__(self, path: str) -> None:
            super().__init__()
            self.path = path

    class PreviewReady(Message):
        def __init__(self, load: DatasetLoad | None, error: str | None = None) -> None:
            super().__init__()
            self.load = load
            self.error = error

    class ContextReady(Message):
        def __init__(self, context: RenderContext | None, error: str | None = None) -> None:
            super().__init__()
            self.context = context
            self.error = error

    class ScanProgress(Message):
        def __init__(self, done: int, total: int) -> None:
            super().__init__()
            self.done = done
            self.total = total

        def can_replace(self, message: Message) -> bool:
            return isinstance(message, DatasetPane.ScanProgress)

    class ScanDone(Message):
        def __init__(self, scan: StatsScan | None, error: str | None = None) -> None:
            super().__init__()
            self.scan = scan
            self.error = error

    def __init__(self, *, id: str | None = None, **kwargs: Any) -> None:
        super().__init__(id=id, **kwargs)
        self.load: DatasetLoad | None = None
        self.context: RenderContext | None = None
        self.scan: StatsScan | None = None
        self._model: Any = None  # what the context was (or is being) built for

    # ------------------------------------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        with Horizontal(id="dataset-inputs"):
            yield Input(placeholder="dataset file: JSONL, JSON, CSV/TSV, text (Tab completes)",
                        suggester=PathSuggester(), id="dataset-path")
            yield Input(placeholder="model: the one selected in Models, or a source", id="dataset-model")
            yield Input(placeholder="format: auto", id="dataset-format")
            yield Input(placeholder="template: auto", id="dataset-template")
            yield Input(value=str(DEFAULT_MAX_SEQ_LEN), placeholder="max len", type="integer", id="dataset-max-len")
        yield Static(Content("Press o, type a dataset path (Tab completes) and press Enter."), id="dataset-summary")
        with Horizontal(id="dataset-body"):
            yield DataTable(cursor_type="row", zebra_stripes=True, id="dataset-records")
            with Vertical(id="dataset-detail"):
                with VerticalScroll(id="dataset-render-scroll"):
                    yield Static(Content(""), id="dataset-render")
                yield Static(Content(""), id="dataset-stats")
                yield ProgressBar(total=100, show_eta=False, id="dataset-progress")
        yield Label(Content("Errors"), id="dataset-errors-title")
        yield DataTable(cursor_type="row", id="dataset-errors")

    def on_mount(self) -> None:
        self.query_one("#dataset-records", DataTable).add_columns("line", "kind", "turns", "first prompt / text")
        self.query_one("#dataset-errors", DataTable).add_columns("line", "reason")
        self.query_one("#dataset-progress", ProgressBar).display = False
        self.watch(self.app, "selected_model", self._selected_model_changed, init=True)

    def focus_target(self) -> Widget:
        """Where the app puts the keyboard when the pane is shown. The records table, not an input, so the
        number keys still switch panes; ``o`` jumps to the path input."""
        return self.query_one("#dataset-records", DataTable)

    def action_open(self) -> None:
        self.query_one("#dataset-path", Input).focus()

    # ------------------------------------------------------------------------------------------ inputs

    @property
    def max_seq_len(self) -> int:
        try:
            return max(2, int(self.query_one("#dataset-max-len", Input).value))
        except ValueError:
            return DEFAULT_MAX_SEQ_LEN

    def _value(self, widget_id: str) -> str | None:
        return self.query_one(f"#{widget_id}", Input).value.strip() or None

    @on(Input.Submitted, "#dataset-path")
    def _path_submitted(self, event: Input.Submitted) -> None:
        self.open_dataset(event.value.strip())

    @on(Input.Submitted, "#dataset-model")
    @on(Input.Submitted, "#dataset-template")
    def _model_submitted(self) -> None:
        self.use_model(self._value("dataset-model") or getattr(self.app, "selected_model", None), force=True)

    @on(Input.Submitted, "#dataset-format")
    @on(Input.Submitted, "#dataset-max-len")
    def _options_submitted(self) -> None:
        self.action_reload()

    def _selected_model_changed(self, model: Any) -> None:
        if self._value("dataset-model") is None:
            self.use_model(model)

    def action_reload(self) -> None:
        path = self._value("dataset-path")
        if path:
            self.open_dataset(path)

    def action_stop_scan(self) -> None:
        for worker in self.workers:
            if worker.group == "dataset.stats":
                worker.cancel()

    # ------------------------------------------------------------------------------------------ dataset

    def open_dataset(self, path: str) -> None:
        if not path:
            return
        self.query_one("#dataset-path", Input).value = path
        self.action_stop_scan()
        self._summary(Content(f"Loading {path}…"))
        self._preview(path, self._value("dataset-format"))

    @work(thread=True, group="dataset.preview", exclusive=True, name="dataset-preview",
          description="Read the first records of a dataset", exit_on_error=False)
    def _preview(self, path: str, fmt: str | None) -> None:
        try:
            load = load_dataset(path, format=fmt, limit=PREVIEW_LIMIT)
        except LlamaForgeError as exc:
            self.post_message(self.PreviewReady(None, str(exc)))
            return
        self.post_message(self.PreviewReady(load))

    @on(PreviewReady)
    def _preview_ready(self, message: PreviewReady) -> None:
        table = self.query_one("#dataset-records", DataTable)
        table.clear()
        errors = self.query_one("#dataset-errors", DataTable)
        errors.clear()
        if message.load is None:
            self.load = None
            self._summary(Content.assemble(("error: ", "bold $text-error"), (message.error or "", "")))
            self.query_one("#dataset-render", Static).update(Content(""))
            return
        self.load = load = message.load
        for i, record in enumerate(load.records):
            kind, snippet, turns = record_preview(record)
            table.add_row(str(record.line), kind, str(turns) if turns else "", Text(snippet), key=str(i))
        self._fill_errors([(e.line, e.reason) for e in load.errors])
        self._update_summary()
        self._render_selected()
        self.post_message(self.DatasetSelected(load.path))
        self._start_scan()

    def _fill_errors(self, rows: list[tuple[int, str]]) -> None:
        table = self.query_one("#dataset-errors", DataTable)
        table.clear()
        for line, reason in rows[:MAX_ERRORS_SHOWN]:
            table.add_row(str(line), Text(safe_text(reason)))
        table.display = bool(rows)
        title = f"Errors ({len(rows)})" if rows else "Errors: none"
        self.query_one("#dataset-errors-title", Label).update(Content(title))

    @on(DataTable.RowHighlighted, "#dataset-records")
    def _row_highlighted(self) -> None:
        self._render_selected()

    def selected_record(self) -> Record | None:
        if self.load is None or not self.load.records:
            return None
        row = self.query_one("#dataset-records", DataTable).cursor_row
        return self.load.records[min(max(row, 0), len(self.load.records) - 1)]

    def _render_selected(self) -> None:
        view = self.query_one("#dataset-render", Static)
        record = self.selected_record()
        if record is None:
            view.update(Content(""))
            return
        if self.context is None:
            hint = Content.styled("(raw record: select a model in Models or type a source to see it rendered)\n\n", "italic")
            view.update(hint + raw_content(record))
            return
        try:
            pieces = render_for_display(record, self.context.tokenizer, self.context.template, self.max_seq_len)
        except LlamaForgeError as exc:
            view.update(Content.assemble(("cannot render this record: ", "bold $text-error"), (str(exc), "")))
            return
        view.update(rendered_content(pieces))

    def _summary(self, content: Content) -> None:
        self.query_one("#dataset-summary", Static).update(content)

    def _update_summary(self) -> None:
        parts: list[tuple[str, str]] = []
        if self.load is not None:
            load = self.load
            more = "" if load.complete else f" (first {load.total} shown; full count below)"
            parts.append((f"{load.format} ({load.container}) · {load.valid} valid, {load.invalid} invalid{more}", ""))
        if self.context is not None:
            parts.append((f"\nmodel {self.context.source} · template {self.context.template.describe()}", ""))
            for warning in self.context.warnings:
                parts.append((f"\nwarning: {warning}", "$text-warning"))
        elif self._model is not None:
            parts.append((f"\nmodel {source_text(self._model)}: loading tokenizer…", "$text-muted"))
        self._summary(Content.assemble(*parts))

    # ------------------------------------------------------------------------------------------ model

    def use_model(self, model: Any, *, force: bool = False) -> None:
        if model is None:
            return
        if not force and self._model is not None and source_text(model) == source_text(self._model):
            return
        self._model = model
        self.context = None
        self._update_summary()
        self._load_context(model, self._value("dataset-template"))

    def _context_loader(self) -> Any:
        services = getattr(self.app, "services", None)
        extra = getattr(services, "extra", None) or {}
        return extra.get("render_context_loader", build_render_context)

    @work(thread=True, group="dataset.model", exclusive=True, name="dataset-tokenizer",
          description="Load the tokenizer and chat template used to render the dataset", exit_on_error=False)
    def _load_context(self, model: Any, template: str | None) -> None:
        try:
            ctx = self._context_loader()(model, getattr(self.app, "settings", None), template_override=template)
        except LlamaForgeError as exc:
            self.post_message(self.ContextReady(None, f"{source_text(model)}: {exc}"))
            return
        self.post_message(self.ContextReady(ctx))

    @on(ContextReady)
    def _context_ready(self, message: ContextReady) -> None:
        self.context = message.context
        if message.context is None:
            self._model = None
            self.notify(message.error or "cannot load the model", title="Dataset", severity="error")
        self._update_summary()
        self._render_selected()
        if self.load is not None and message.context is not None:
            self._start_scan()

    # ------------------------------------------------------------------------------------------ full pass

    def _start_scan(self) -> None:
        if self.load is None:
            return
        self.action_stop_scan()
        bar = self.query_one("#dataset-progress", ProgressBar)
        bar.update(progress=0)
        bar.display = True
        self.query_one("#dataset-stats", Static).update(Content.styled("Scanning the whole file…", "$text-muted"))
        self._scan(self.load.path, self._value("dataset-format"), self.context, self.max_seq_len)

    @work(thread=True, group="dataset.stats", exclusive=True, name="dataset-stats",
          description="Validate the whole dataset and count tokens (streaming)", exit_on_error=False)
    def _scan(self, path: str, fmt: str | None, ctx: RenderContext | None, max_seq_len: int) -> None:
        worker = get_current_worker()
        last = [-1]

        def progress(done: int, total: int) -> None:
            pct = int(100 * done / total) if total else 100
            if pct != last[0]:
                last[0] = pct
                self.post_message(self.ScanProgress(done, total))

        try:
            scan = scan_token_stats(path, ctx.tokenizer if ctx else None, ctx.template if ctx else None,
                                    max_seq_len=max_seq_len, format=fmt, progress=progress,
                                    stop_event=_CancelFlag(worker), max_errors=MAX_ERRORS_SHOWN)  # type: ignore[arg-type]
        except LlamaForgeError as exc:
            self.post_message(self.ScanDone(None, str(exc)))
            return
        if not scan.cancelled:
            self.post_message(self.ScanDone(scan))

    @on(ScanProgress)
    def _scan_progress(self, message: ScanProgress) -> None:
        self.query_one("#dataset-progress", ProgressBar).update(total=max(message.total, 1), progress=message.done)

    @on(ScanDone)
    def _scan_done(self, message: ScanDone) -> None:
        self.query_one("#dataset-progress", ProgressBar).display = False
        stats_view = self.query_one("#dataset-stats", Static)
        if message.scan is None:
            stats_view.update(Content.assemble(("error: ", "bold $text-error"), (message.error or "", "")))
            return
        self.scan = scan = message.scan
        self._fill_errors([(e.line, e.reason) for e in scan.errors])
        lines = [f"{scan.total} records · {scan.valid} valid · {scan.total - scan.valid} invalid"]
        if scan.errors_dropped:
            lines[0] += f" ({scan.errors_dropped} more errors not listed)"
        if self.context is not None:
            s = scan.stats
            lines += [
                f"tokens/example: min {s.min} · median {s.median} · p95 {s.p95} · max {s.max}",
                f"over max_seq_len {self.max_seq_len}: {s.over_max_seq_len} "
                f"({'split into pieces' if s.split_documents else 'truncated'}) · "
                f"trainable tokens: {s.total_trainable:,}",
                "steps/epoch: " + " · ".join(f"{steps_per_epoch(s.examples, b)} at batch {b}" for b in (1, 4, 16)),
            ]
        else:
            lines.append("token stats need a model (select one in Models or type a source)")
        stats_view.update(Content("\n".join(lines)))

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """The app notifies worker failures; here only the pane's own state is cleaned up."""
        if event.state == WorkerState.ERROR and (event.worker.group or "").startswith("dataset"):
            self.query_one("#dataset-progress", ProgressBar).display = False
            self._summary(Content.assemble(("error: ", "bold $text-error"), (str(event.worker.error), "")))

    def dataset_path(self) -> Path | None:
        return Path(self.load.path) if self.load is not None else None
