"""The HF cache pane: what the Hugging Face cache holds, what it costs, and actions on it.

A sortable table of cached repos (size first), the selected repo's revisions and completeness, which
Ollama models map to it, deletion after a confirmation that states the space freed (and flags repos the
selected model or a training run still needs), and base-model downloads with a progress bar. The scan,
deletions and downloads run in thread workers; the UI only renders their results.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widget import Widget
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import DataTable, Input, Label, Static
from textual.worker import Worker, WorkerState

from llamaforge_tui.core.hub import usage as hf_cache_usage
from llamaforge_tui.core.model.basemodel import ollama_models_by_repo
from llamaforge_tui.core.model.dequant_cache import scan_cache_with_dequantized
from llamaforge_tui.core.train.runs import runs_by_hf_repo
from llamaforge_tui.core.errors import LlamaForgeError
from llamaforge_tui.core.fsutil import human_bytes
from llamaforge_tui.core.hub.cache import (
    CacheScan,
    DeletionPlan,
    RepoEntry,
    cache_dir_from_settings,
    delete_revisions,
    parse_repo_ref,
    plan_deletion,
)
from llamaforge_tui.core.hub.download import DownloadCancelled, DownloadProgress, download_repo
from llamaforge_tui.tui.screens.confirm_delete import ConfirmDelete
from llamaforge_tui.tui.widgets.table_fit import fit_table
from llamaforge_tui.tui.widgets.cache_text import complete_label, repo_details, short_date
from llamaforge_tui.tui.widgets.download_progress import DownloadProgressView

NARROW_WIDTH = 100  # below this the details go under the table
# (column key, title, sort key, numbers/dates sort biggest/newest first)
COLUMNS: tuple[tuple[str, str, Any, bool], ...] = (
    ("repo", "Repo", lambda r: r.repo_id.lower(), False),
    ("type", "Type", lambda r: r.repo_type, False),
    ("size", "Size", lambda r: r.size_bytes, True),
    ("revs", "Revs", lambda r: len(r.revisions), True),
    ("complete", "Complete", lambda r: (r.corrupt is None, r.complete is True, r.complete is None), True),
    ("modified", "Modified", lambda r: r.last_modified, True),
    ("accessed", "Accessed", lambda r: r.last_accessed, True),
)
_SORT_KEYS = {key: (fn, desc) for key, _, fn, desc in COLUMNS}
_WORKER_GROUPS = {"cache-scan", "cache-delete", "cache-download"}


@dataclass
class ScanResult:
    scan: CacheScan
    used_by: dict[str, list[str]]
    runs: dict[str, list[str]]
    note: str | None


class CachePane(Vertical):
    """The HF cache pane. ``start_download(repo_id)`` is its entry point for other panes."""

    BINDINGS = [
        Binding("r", "refresh", "Rescan", id="cache.refresh"),
        Binding("s", "cycle_sort", "Sort", id="cache.sort"),
        Binding("space", "toggle_mark", "Mark revision", id="cache.mark"),
        Binding("x,delete", "delete", "Delete", id="cache.delete"),
        Binding("d", "download", "Download", id="cache.download"),
        Binding("c", "cancel_download", "Cancel download", id="cache.cancel_download"),
    ]

    class DownloadProgressed(Message):
        def __init__(self, progress: DownloadProgress) -> None:
            super().__init__()
            self.progress = progress

    class DownloadFinished(Message):
        """A base model landed in the cache (other panes may refresh their cache status)."""

        def __init__(self, repo_id: str, snapshot: Path) -> None:
            super().__init__()
            self.repo_id = repo_id
            self.snapshot = snapshot

    def __init__(self, *, id: str | None = None, **kwargs: Any) -> None:
        super().__init__(id=id, **kwargs)
        self.result: ScanResult | None = None
        self.sort_column = "size"
        self.sort_reverse = True
        self.selected: RepoEntry | None = None
        self.marked: set[str] = set()
        self._download_worker: Worker[Path] | None = None
        self._download_cancel = threading.Event()
        self._download_repo: str | None = None

    def compose(self) -> ComposeResult:
        yield Label(Text("Scanning the Hugging Face cache ..."), id="cache-summary")
        with Horizontal(id="cache-download-row"):
            yield Input(placeholder="org/name[@revision]: Enter downloads config, tokenizer and safetensors",
                        id="cache-download-input")
        yield DownloadProgressView(id="cache-download")
        with Horizontal(id="cache-body"):
            table = DataTable(id="cache-table", cursor_type="row", zebra_stripes=True)
            table.border_title = "Cached repos"
            yield table
            with Vertical(id="cache-side"):
                yield Static("", id="cache-details", markup=False)
                revisions = DataTable(id="cache-revisions", cursor_type="row")
                revisions.border_title = "Revisions (space marks, x deletes)"
                yield revisions
        yield Static("", id="cache-warnings", markup=False)

    def on_mount(self) -> None:
        revisions = self.query_one("#cache-revisions", DataTable)
        for key, title in (("mark", " "), ("commit", "Commit"), ("refs", "Refs"), ("size", "Size"),
                           ("files", "Files"), ("complete", "Complete"), ("modified", "Modified")):
            revisions.add_column(Text(title), key=key)
        self._build_columns()
        self.action_refresh()

    def on_resize(self) -> None:
        self.set_class(self.size.width < NARROW_WIDTH, "-narrow")  # details under the table, not beside it
        self.call_after_refresh(self._fit_columns)

    def _fit_columns(self) -> None:
        """The repo name shrinks (with an ellipsis) so every column shows; sizes keep their units."""
        fit_table(self.query_one("#cache-table", DataTable), [key == "repo" for key, *_ in COLUMNS])

    def focus_target(self) -> Widget:
        """Where the app puts the keyboard when this pane is shown: arrow keys move in the repo table."""
        return self.query_one("#cache-table", DataTable)

    @property
    def settings(self) -> Any:
        return getattr(self.app, "settings", None)

    # -- scanning -----------------------------------------------------------------------------

    def action_refresh(self) -> None:
        self.query_one("#cache-summary", Label).update(Text("Scanning the Hugging Face cache ..."))
        self._scan()

    @work(thread=True, group="cache-scan", name="cache-scan", description="Scan the Hugging Face cache",
          exclusive=True, exit_on_error=False)
    def _scan(self) -> ScanResult:
        settings = self.settings
        scan = scan_cache_with_dequantized(cache_dir_from_settings(settings))
        used_by, note = ollama_models_by_repo(settings)
        return ScanResult(scan, used_by, runs_by_hf_repo(settings), note)

    def apply_scan(self, result: ScanResult) -> None:
        self.result = result
        scan = result.scan
        corrupt = f" ({scan.corrupt_count} corrupt)" if scan.corrupt_count else ""
        summary = (f"HF cache {scan.cache_dir}: {len(scan.repos)} repo(s){corrupt}, "
                   f"total {human_bytes(scan.total_size_bytes)}")
        if scan.incomplete_files:
            size = sum(s for _, s in scan.incomplete_files)
            summary += f"; {len(scan.incomplete_files)} interrupted download(s) ({human_bytes(size)})"
        if scan.dequantized_cache_bytes:
            summary += f"; dequantized GGUF cache {human_bytes(scan.dequantized_cache_bytes)}"
        self.query_one("#cache-summary", Label).update(Text(summary))
        warnings = [f"warning: {w}" for w in scan.warnings] + ([f"note: {result.note}"] if result.note else [])
        panel = self.query_one("#cache-warnings", Static)
        panel.update(Text("\n".join(warnings)))
        panel.set_class(bool(warnings), "-shown")
        self._fill_table()

    # -- the repo table -----------------------------------------------------------------------

    def _build_columns(self) -> None:
        table = self.query_one("#cache-table", DataTable)
        table.clear(columns=True)
        for key, title, _, _ in COLUMNS:
            arrow = (" v" if self.sort_reverse else " ^") if key == self.sort_column else ""
            table.add_column(Text(title + arrow), key=key)

    def sorted_repos(self) -> list[RepoEntry]:
        if self.result is None:
            return []
        fn, _ = _SORT_KEYS[self.sort_column]
        return sorted(self.result.scan.repos, key=fn, reverse=self.sort_reverse)

    def _fill_table(self) -> None:
        table = self.query_one("#cache-table", DataTable)
        previous = self.selected
        self._build_columns()
        for repo in self.sorted_repos():
            table.add_row(Text(repo.repo_id, no_wrap=True, overflow="ellipsis"), Text(repo.repo_type), Text(human_bytes(repo.size_bytes), justify="right"),
                          Text(str(len(repo.revisions)), justify="right"), Text(complete_label(repo)),
                          Text(short_date(repo.last_modified)), Text(short_date(repo.last_accessed)), key=self._key(repo))
        self._fit_columns()
        if table.row_count == 0:
            self._select(None)
            return
        row = 0
        if previous is not None:
            keys = [self._key(r) for r in self.sorted_repos()]
            row = keys.index(self._key(previous)) if self._key(previous) in keys else 0
        table.move_cursor(row=row)
        self._select(self.sorted_repos()[row])

    @staticmethod
    def _key(repo: RepoEntry) -> str:
        return f"{repo.repo_type}:{repo.repo_id}"

    def sort_by(self, column: str) -> None:
        """Sort by ``column``; the same column again flips the direction."""
        if column == self.sort_column:
            self.sort_reverse = not self.sort_reverse
        else:
            self.sort_column, self.sort_reverse = column, _SORT_KEYS[column][1]
        self._fill_table()

    def action_cycle_sort(self) -> None:
        keys = [key for key, *_ in COLUMNS]
        self.sort_column = keys[(keys.index(self.sort_column) + 1) % len(keys)]
        self.sort_reverse = _SORT_KEYS[self.sort_column][1]
        self._fill_table()

    @on(DataTable.HeaderSelected, "#cache-table")
    def _header_selected(self, event: DataTable.HeaderSelected) -> None:
        event.stop()
        self.sort_by(str(event.column_key.value))

    @on(DataTable.RowHighlighted, "#cache-table")
    def _row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        if self.result is None or event.row_key.value is None:
            return
        key = event.row_key.value
        repo = next((r for r in self.result.scan.repos if self._key(r) == key), None)
        if repo is not None and (self.selected is None or self._key(self.selected) != key):
            self._select(repo)

    # -- the selected repo --------------------------------------------------------------------

    def _needed(self, repo: RepoEntry) -> list[str]:
        runs = self.result.runs if self.result else {}
        return hf_cache_usage.needed_by(repo.repo_id, selected_model=getattr(self.app, "selected_model", None),
                                        runs=runs)

    def _select(self, repo: RepoEntry | None) -> None:
        if repo is None or self.selected is None or self._key(self.selected) != self._key(repo):
            self.marked.clear()
        self.selected = repo
        details = self.query_one("#cache-details", Static)
        revisions = self.query_one("#cache-revisions", DataTable)
        revisions.clear()
        if repo is None:
            details.update("The Hugging Face cache is empty. Type a repo id above to download a base model.")
            return
        result = self.result
        used_by = result.used_by.get(repo.repo_id, []) if result and repo.repo_type == "model" else []
        runs = result.runs.get(repo.repo_id, []) if result else []
        details.update(repo_details(repo, used_by, runs, self._needed(repo)))
        for rev in repo.revisions:
            complete = {True: "yes", False: "no", None: "-"}[rev.complete]
            revisions.add_row(Text("*" if rev.commit in self.marked else " "), Text(rev.commit[:12]),
                              Text(", ".join(rev.refs)), Text(human_bytes(rev.size_bytes), justify="right"),
                              Text(str(len(rev.files)), justify="right"), Text(complete), Text(short_date(rev.last_modified)),
                              key=rev.commit)

    def action_toggle_mark(self) -> None:
        revisions = self.query_one("#cache-revisions", DataTable)
        if self.selected is None or revisions.row_count == 0:
            return
        commit = self.selected.revisions[revisions.cursor_row].commit
        self.marked.symmetric_difference_update({commit})
        revisions.update_cell(commit, "mark", Text("*" if commit in self.marked else " "))

    # -- deleting -----------------------------------------------------------------------------

    def action_delete(self) -> None:
        """Delete the marked revisions of the selected repo, or the whole repo when none is marked."""
        if self.result is None or self.selected is None:
            self.app.notify("Nothing selected to delete.", severity="warning")
            return
        repo = self.selected
        marked = [r.commit for r in repo.revisions if r.commit in self.marked]
        try:
            plan = plan_deletion(self.result.scan, repo.repo_id, marked or None, repo_type=repo.repo_type)
        except LlamaForgeError as exc:
            self.app.notify(str(exc), title="Cannot delete", severity="error", markup=False)
            return
        needed = self._needed(repo)
        used_by = self.result.used_by.get(repo.repo_id, []) if repo.repo_type == "model" else []
        if used_by and plan.whole_repo:
            needed.append(f"Ollama model(s) {', '.join(used_by)} map to it (training from them with --weights hf)")

        def answered(confirm: bool | None) -> None:
            if confirm:
                self._delete(plan)

        self.app.push_screen(ConfirmDelete(plan, needed), answered)

    @work(thread=True, group="cache-delete", name="cache-delete", description="Delete from the HF cache",
          exit_on_error=False)
    def _delete(self, plan: DeletionPlan) -> tuple[DeletionPlan, int]:
        return plan, delete_revisions(plan)

    # -- downloading --------------------------------------------------------------------------

    def action_download(self) -> None:
        field = self.query_one("#cache-download-input", Input)
        if not field.value and self.selected is not None and self.selected.repo_type == "model":
            field.value = self.selected.repo_id
        field.focus()

    @on(Input.Submitted, "#cache-download-input")
    def _download_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if event.value.strip():
            self.start_download(event.value.strip())

    @property
    def downloading(self) -> bool:
        return self._download_worker is not None and not self._download_worker.is_finished

    def start_download(self, repo_id: str) -> bool:
        """Download ``repo_id`` (``org/name[@rev]``) into the cache; False if it could not start."""
        try:
            repo, revision = parse_repo_ref(repo_id)
        except LlamaForgeError as exc:
            self.app.notify(str(exc), title="Download", severity="error", markup=False)
            return False
        if self.downloading:
            self.app.notify(f"Already downloading {self._download_repo}; cancel it first (c).", severity="warning",
                            markup=False)
            return False
        self.query_one("#cache-download-input", Input).value = repo_id
        self._download_cancel = threading.Event()
        self._download_repo = repo
        self.query_one(DownloadProgressView).begin(repo, revision)
        self._download_worker = self._download(repo, revision, self._download_cancel)
        return True

    @work(thread=True, group="cache-download", name="hf-download", description="Download a base model",
          exit_on_error=False)
    def _download(self, repo_id: str, revision: str | None, cancel: threading.Event) -> Path:
        return download_repo(repo_id, revision, cache_dir_from_settings(self.settings),
                             progress=lambda p: self.post_message(self.DownloadProgressed(p)), cancel=cancel)

    def action_cancel_download(self) -> None:
        if self.downloading:
            self._download_cancel.set()
            self.query_one(DownloadProgressView).query_one("#download-line", Label).update(Text("cancelling ..."))

    def on_cache_pane_download_progressed(self, message: DownloadProgressed) -> None:
        if not self._download_cancel.is_set():
            self.query_one(DownloadProgressView).show(message.progress)

    # -- worker outcomes (one place) ----------------------------------------------------------

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        worker = event.worker
        if worker.group not in _WORKER_GROUPS:
            return
        event.stop()
        if event.state == WorkerState.SUCCESS:
            if worker.group == "cache-scan":
                self.apply_scan(worker.result)
            elif worker.group == "cache-delete":
                plan, freed = worker.result
                self.app.notify(f"Deleted {plan.describe()}: freed {human_bytes(freed)}", markup=False)
                self.action_refresh()
            else:
                snapshot: Path = worker.result
                self.query_one(DownloadProgressView).finish(f"done: {self._download_repo} is in the cache ({snapshot})")
                self.app.notify(f"Downloaded {self._download_repo}", markup=False)
                self.post_message(self.DownloadFinished(self._download_repo or "", snapshot))
                self.action_refresh()
        elif event.state == WorkerState.ERROR:
            error = worker.error
            text = str(error) if isinstance(error, LlamaForgeError) else f"{type(error).__name__}: {error}"
            if worker.group == "cache-download":
                cancelled = isinstance(error, DownloadCancelled)
                self.query_one(DownloadProgressView).finish(text, "-cancelled" if cancelled else "-failed")
                self.app.notify(text, title="Download", severity="warning" if cancelled else "error", markup=False)
                self.action_refresh()
            else:
                self.app.notify(text, title="HF cache", severity="error", markup=False)
