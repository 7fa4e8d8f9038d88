"""The Models pane: every model in the Ollama store, and the highlighted one's details.

The scan (manifests, GGUF headers, HF cache status, server ping) runs in a thread worker, so the UI never
waits on the disk or the network; results come back as a message. Everything shown comes from files
other programs wrote, so it is rendered as plain ``Text`` (a stray ``[`` in a template must not be markup).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widget import Widget
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import DataTable, Input, Static
from textual.worker import get_current_worker

from llamaforge_tui.core.model.basemodel import set_base_model_override
from llamaforge_tui.core.errors import LlamaForgeError
from llamaforge_tui.core.fsutil import human_bytes, safe_text
from llamaforge_tui.core.model.basemodel import scan_models
from llamaforge_tui.core.ollama.store import OllamaModel, ServerStatus, StoreScan, server_status
from llamaforge_tui.tui.screens.base_override import BaseOverrideScreen
from llamaforge_tui.tui.widgets.table_fit import fit_table
from llamaforge_tui.tui.widgets.models_actions import ModelActions, ModelsTable

SHRINKABLE_COLUMNS = (True, False, False, False, False, False, True)  # name ... HF base: the long ones
NARROW_WIDTH = 100  # below this the details go under the table instead of beside it
# Other panes follow the selection (the Dataset pane loads a tokenizer), so tell them only once the
# cursor rests, not for every row an arrow key passes over.
SELECT_SETTLE_SECONDS = 0.3
LAYER_KINDS_SHOWN = ("template", "system", "params", "license", "messages", "adapter", "projector")


def base_cell(model: OllamaModel) -> str:
    info = model.base_model
    if info is None or info.repo is None:
        return "no mapping" if model.gguf_path is not None else "-"
    state = {"cached": "cached", "partial": "partial", "missing": "download"}.get(info.cache_status or "", "?")
    return f"{info.repo} ({state})"


def row_cells(model: OllamaModel) -> list[Text]:
    s = model.summary
    cells = [
        model.full_name,
        model.status,
        (s.architecture or "?") if s else "-",
        (s.quantization or "?") if s else "-",
        s.parameter_label if s else "-",
        human_bytes(model.size_bytes) if model.size_bytes else "-",
        base_cell(model),
    ]
    return [Text(safe_text(c), no_wrap=True, overflow="ellipsis") for c in cells]  # names may hold bad bytes


def detail_rows(model: OllamaModel) -> list[tuple[str, str]]:
    """(label, value) pairs for the details panel; plain strings, shown without markup."""
    rows: list[tuple[str, str]] = [("Model", model.full_name), ("Status", model.status)]
    if model.reason:
        rows.append(("Why", model.reason))
    rows.append(("Manifest", str(model.manifest_path)))
    if model.gguf_path is not None:
        rows.append(("GGUF blob", str(model.gguf_path)))
        rows.append(("GGUF size", human_bytes(model.size_bytes)))
    s = model.summary
    if s is not None:
        quant = s.quantization or "unknown"
        if s.quantization_source != "general.file_type":
            quant += " (guessed from tensor types: no general.file_type)"
        rows += [
            ("Architecture", s.architecture or "unknown"),
            ("Quantization", quant),
            ("Tensor types", s.tensor_types_text() or "-"),
            ("Parameters", f"{s.parameter_label} ({s.parameter_count:,})"),
            ("Context", _num(s.context_length)),
            ("Layers", _num(s.block_count)),
            ("Heads", f"{_num(s.head_count)} (KV {_num(s.head_count_kv)})"),
            ("Embedding", _num(s.embedding_length)),
            ("Vocabulary", _num(s.vocab_size)),
            ("Chat template", "yes (in the GGUF)" if s.has_chat_template else "no (not in the GGUF)"),
        ]
    present = [k for k in LAYER_KINDS_SHOWN if k in model.layers]
    counts = model.layer_counts()
    if counts.get("tensor"):
        present.append(f"{counts['tensor']} tensor layers")
    rows.append(("Ollama layers", ", ".join(present) if present else "none besides the weights"))
    rows += _base_rows(model)
    return rows


def _base_rows(model: OllamaModel) -> list[tuple[str, str]]:
    info = model.base_model
    if info is None:
        return [("HF base", "-")]
    if info.repo is None:
        text = "no mapping: will train from the GGUF" if model.gguf_path is not None else "no mapping"
        return [("HF base", text), ("Mapping", info.detail)]
    rows = [("HF base", info.repo), ("Mapping", f"{info.source}: {info.detail}"), ("HF cache", info.describe_cache())]
    if info.needs_download:
        rows.append(("", "press d to download it"))
    return rows


def _num(value: int | None) -> str:
    return f"{value:,}" if isinstance(value, int) else "unknown"


def render_details(model: OllamaModel | None) -> Text:
    if model is None:
        return Text("No model selected.")
    rows = detail_rows(model)
    width = max(len(label) for label, _ in rows) + 2
    text = Text()
    for label, value in rows:
        text.append(f"{label:<{width}}", style="bold")
        text.append(safe_text(value) + "\n")
    return text


@dataclass
class _ScanResult:
    scan: StoreScan | None
    server: ServerStatus | None
    error: str | None = None


class ModelsPane(ModelActions, Vertical):
    """Lists the Ollama store. Posts ``ModelSelected`` for the highlighted model and ``DownloadRequested``.
    Managing models (show, copy, rename, delete, pull, loaded) comes from ``ModelActions``."""

    BINDINGS = [
        Binding("enter", "show_model", "Show", id="models.show"),
        Binding("slash", "filter", "Filter", id="models.filter"),
        Binding("r", "rescan", "Rescan", id="models.rescan"),
        Binding("d", "download", "Download base", id="models.download"),
        Binding("o", "override", "Set base", id="models.override"),
        Binding("c", "copy_model", "Copy", id="models.copy"),
        Binding("m", "rename_model", "Rename", id="models.rename"),
        Binding("x,delete", "delete_model", "Delete", id="models.delete"),
        Binding("p", "pull_model", "Pull", id="models.pull"),
        Binding("l", "running_models", "Loaded", id="models.running"),
        Binding("escape", "clear_filter", "Clear filter", show=False, id="models.clear_filter"),
    ]

    class ModelSelected(Message):
        """The highlighted model changed (``model`` is a ``core.ollama.OllamaModel``)."""

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

    class DownloadRequested(Message):
        """The user asked to download the selected model's HF base (``d``)."""

        def __init__(self, repo_id: str) -> None:
            super().__init__()
            self.repo_id = repo_id

    class ScanFinished(Message):
        def __init__(self, result: _ScanResult) -> None:
            super().__init__()
            self.result = result

    def __init__(self, *, id: str | None = None, **kwargs: Any) -> None:
        super().__init__(id=id, **kwargs)
        self.models: list[OllamaModel] = []
        self.scan: StoreScan | None = None
        self.server: ServerStatus | None = None
        self.filter_text = ""
        self.selected: OllamaModel | None = None
        self._shown: list[OllamaModel] = []
        self._announced: OllamaModel | None = None
        self._announce_timer: Any = None

    def compose(self) -> ComposeResult:
        yield Static(Text("Scanning the Ollama store…"), id="models-status", markup=False)
        box = Input(placeholder="filter: name, arch, quantization, status, base repo (esc clears)", id="models-filter")
        box.display = False  # hidden from the start, so auto-focus can never land (and type) in it
        yield box
        with Horizontal(id="models-body"):
            table: DataTable[Text] = ModelsTable(id="models-table", cursor_type="row", zebra_stripes=True)
            yield table
            with VerticalScroll(id="models-details-box"):
                yield Static(Text("No model selected."), id="models-details", markup=False)

    def on_mount(self) -> None:
        table = self.query_one("#models-table", DataTable)
        for label, key in (("Name", "name"), ("Status", "status"), ("Arch", "arch"), ("Quant", "quant"),
                           ("Params", "params"), ("Size", "size"), ("HF base", "base")):
            table.add_column(label, key=key)
        self.start_scan()

    def on_resize(self) -> None:
        self.set_class(self.size.width < NARROW_WIDTH, "-narrow")
        self.call_after_refresh(self._fit_columns)

    def _fit_columns(self) -> None:
        """Name and HF base shrink (with an ellipsis) so every column shows; sizes keep their units."""
        fit_table(self.query_one("#models-table", DataTable), SHRINKABLE_COLUMNS)

    def focus_target(self) -> Widget:
        """Where the app puts the keyboard when the pane is shown."""
        return self.query_one("#models-table", DataTable)

    # -- scanning ---------------------------------------------------------------------------------------
    def start_scan(self) -> None:
        self.add_class("-scanning")
        self.query_one("#models-status", Static).update(Text("Scanning the Ollama store…"))
        self._scan_worker()

    @work(thread=True, group="models-scan", name="models.scan", description="Scanning the Ollama store",
          exit_on_error=False, exclusive=True)
    def _scan_worker(self) -> None:
        settings = self.app.settings  # type: ignore[attr-defined]
        worker = get_current_worker()
        try:
            scan = scan_models(settings)
        except (OSError, LlamaForgeError) as exc:  # scan_models reports problems itself; a last resort
            result = _ScanResult(None, None, f"scan failed: {exc}")
        else:
            result = _ScanResult(scan, None)
        if worker.is_cancelled:
            return
        self.post_message(self.ScanFinished(result))
        server = server_status(settings, timeout=0.5)
        if not worker.is_cancelled:
            self.post_message(self.ScanFinished(_ScanResult(result.scan, server, result.error)))

    @on(ScanFinished)
    def _scan_finished(self, message: ScanFinished) -> None:
        result = message.result
        self.remove_class("-scanning")
        if result.server is not None:
            self.server = result.server
        if result.scan is not None and result.scan is not self.scan:
            self.scan = result.scan
            self.models = result.scan.models
            self._refill_table()
        self._update_status(result.error)
        self.refresh_bindings()  # the server actions follow the server's state

    def _update_status(self, error: str | None = None) -> None:
        # Short, actionable facts first (the server's state, the counts, the filter), the long folder problems
        # last: at 80 columns the line wraps and the status shows at most a few lines.
        parts = []
        if error:
            parts.append(error)
        parts.append(self.server.describe() if self.server else "checking the Ollama server…")
        reason = self.server_down_reason()
        if reason:
            parts.append(reason)
        if self.scan is not None:
            roots = ", ".join(str(r) for r in self.scan.roots) or "no readable models folder"
            usable = sum(1 for m in self.models if m.status == "ok")
            parts.append(f"{len(self.models)} models ({usable} usable) in {roots}")
        if self.filter_text:
            parts.append(f"filter: {self.filter_text!r} ({len(self._shown)} shown)")
        if self.scan is not None:
            parts.extend(self.scan.problems)
        self.query_one("#models-status", Static).update(Text(" · ".join(parts)))

    # -- table ------------------------------------------------------------------------------------------
    def _matches(self, model: OllamaModel) -> bool:
        if not self.filter_text:
            return True
        s = model.summary
        haystack = " ".join(filter(None, [
            model.full_name, model.status, s.architecture if s else None, s.quantization if s else None,
            model.base_model.repo if model.base_model else None])).lower()
        return all(word in haystack for word in self.filter_text.lower().split())

    def _refill_table(self) -> None:
        table = self.query_one("#models-table", DataTable)
        keep = self.selected.key if self.selected else None
        table.clear()
        self._shown = [m for m in self.models if self._matches(m)]
        for i, model in enumerate(self._shown):
            table.add_row(*row_cells(model), key=str(i))
        self._fit_columns()
        if not self._shown:
            self._select(None)
            if not self.models:
                self.query_one("#models-details", Static).update(Text(
                    "No Ollama models found. Pull one (for example `ollama pull gemma3:270m`), or point "
                    "LlamaForge at another store with --models-dir or OLLAMA_MODELS, then press r."))
            return
        index = next((i for i, m in enumerate(self._shown) if m.key == keep), 0)
        table.move_cursor(row=index)
        self._select(self._shown[index])

    def _select(self, model: OllamaModel | None, *, now: bool = False) -> None:
        self.selected = model
        self.query_one("#models-details", Static).update(render_details(model))
        if self._announce_timer is not None:
            self._announce_timer.stop()
            self._announce_timer = None
        if model is None or model is self._announced:
            return
        if now:
            self._announce()
        else:
            self._announce_timer = self.set_timer(SELECT_SETTLE_SECONDS, self._announce)

    def _announce(self) -> None:
        self._announce_timer = None
        if self.selected is not None and self.selected is not self._announced:
            self._announced = self.selected
            self.post_message(self.ModelSelected(self.selected))

    @on(DataTable.RowHighlighted, "#models-table")
    def _row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        index = int(event.row_key.value) if event.row_key.value is not None else -1
        if 0 <= index < len(self._shown):
            self._select(self._shown[index])

    @on(DataTable.RowSelected, "#models-table")
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        index = int(event.row_key.value) if event.row_key.value is not None else -1
        if 0 <= index < len(self._shown):
            self._select(self._shown[index], now=True)
            self.action_show_model()

    # -- filter -----------------------------------------------------------------------------------------
    @on(Input.Changed, "#models-filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value.strip()
        self._refill_table()
        self._update_status()

    @on(Input.Submitted, "#models-filter")
    def _filter_submitted(self) -> None:
        self.query_one("#models-table", DataTable).focus()

    # -- actions ----------------------------------------------------------------------------------------
    def action_filter(self) -> None:
        box = self.query_one("#models-filter", Input)
        box.display = True
        box.focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#models-filter", Input)
        if box.value:
            box.value = ""
        box.display = False
        self.query_one("#models-table", DataTable).focus()

    def action_rescan(self) -> None:
        self.start_scan()

    def action_override(self) -> None:
        model = self.selected
        if model is None:
            return
        settings = self.app.settings  # type: ignore[attr-defined]
        current = model.base_model.repo if model.base_model and model.base_model.source == "user" else None

        def save(value: str | None) -> None:
            if value is None:
                return
            try:
                path = set_base_model_override(settings, model.full_name, value or None)
            except LlamaForgeError as exc:
                self.app.notify(str(exc), severity="error", markup=False)
                return
            what = f"{model.full_name} -> {value}" if value else f"override for {model.full_name} removed"
            self.app.notify(f"Saved {what} in {path}", markup=False)
            self.start_scan()

        self.app.push_screen(BaseOverrideScreen(model.full_name, current), save)

    def action_download(self) -> None:
        info = self.selected.base_model if self.selected else None
        if info is None or info.repo is None:
            self.app.notify("This model has no Hugging Face base to download.", severity="warning", markup=False)
        elif not info.needs_download:
            self.app.notify(f"{info.repo} is already cached.", markup=False)
        else:
            self.post_message(self.DownloadRequested(info.repo))
