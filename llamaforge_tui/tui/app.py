"""The Textual application shell: the panes in tabs, global bindings, command palette entries.

The app is built by ``make_app(settings, services)``: the CLI passes real settings and services, tests
pass fakes. Panes read shared state from the app's reactives (attributes go down) and report
selections with messages (messages go up); see ``on_models_pane_model_selected`` and friends.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from textual.app import App, ComposeResult, ScreenStackError, SystemCommand
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.reactive import reactive
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer, Header, Input, TabbedContent, TabPane, TextArea
from textual.worker import Worker, WorkerState

from llamaforge_tui.core.settings import Settings
from llamaforge_tui.tui.widgets.cache_pane import CachePane
from llamaforge_tui.tui.widgets.chat_pane import ChatPane
from llamaforge_tui.tui.widgets.dataset_pane import DatasetPane
from llamaforge_tui.tui.widgets.models_pane import ModelsPane
from llamaforge_tui.tui.widgets.panes import Panes
from llamaforge_tui.tui.widgets.train_pane import TrainPane

WidgetT = TypeVar("WidgetT", bound=Widget)

PANES: tuple[tuple[str, str, str], ...] = (
    # (tab id, title, key)
    ("models", "Models", "1"),
    ("cache", "HF cache", "2"),
    ("dataset", "Dataset", "3"),
    ("train", "Train", "4"),
    ("chat", "Chat", "5"),
)


@dataclass
class Services:
    """Things the app talks to that tests replace with fakes.

    ``gpu_sampler``: a callable returning GPU samples (``core.system``); ``None`` means the real one for
    this machine (``core.gpu_samplers.AutoGpuSampler``: NVML, AMD SMI or the Apple GPU).
    ``extra``: room for pane-specific services without widening the factory's signature.
    """

    gpu_sampler: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


class LlamaForgeApp(App[int]):
    TITLE = "LlamaForge"
    SUB_TITLE = "fine-tune your Ollama models"
    CSS_PATH = "app.tcss"
    BINDINGS = [
        *(Binding(key, f"show_pane('{pane_id}')", title, id=f"app.pane.{pane_id}") for pane_id, title, key in PANES),
        Binding("q", "quit", "Quit", id="app.quit"),
        Binding("ctrl+q", "quit", "Quit", show=False, priority=True, id="app.quit_ctrl"),
        Binding("escape", "leave_field", "Leave the field", show=False, id="app.leave_field"),
    ]

    # Shared selections: set from pane messages, watched by other panes.
    selected_model: reactive[Any] = reactive(None, always_update=True)  # core.ollama.OllamaModel | None
    selected_dataset: reactive[str | None] = reactive(None)  # dataset path

    def __init__(self, settings: Settings, services: Services | None = None, *, monitor_run: str | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.services = services or Services()
        self.monitor_run = monitor_run
        self._panes_ready = False
        self._pending_pane: str | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        with Panes(initial="train" if self.monitor_run else "models", id="panes"):
            with TabPane("Models [1]", id="models"):
                yield ModelsPane(id="models-pane")
            with TabPane("HF cache [2]", id="cache"):
                yield CachePane(id="cache-pane")
            with TabPane("Dataset [3]", id="dataset"):
                yield DatasetPane(id="dataset-pane")
            with TabPane("Train [4]", id="train"):
                yield TrainPane(id="train-pane", monitor_run=self.monitor_run)
            with TabPane("Chat [5]", id="chat"):
                yield ChatPane(id="chat-pane")
        yield Footer()

    async def action_quit(self) -> None:
        """Quitting while a run trains asks first; the Train pane then stops the run gracefully and exits."""
        if any(pane.guard_quit() for pane in self.screen_stack[0].query(TrainPane)):
            return
        self.exit()

    def action_show_pane(self, pane_id: str) -> None:
        if not self._panes_ready:
            # Before the first frame the tabs are still activating their first pane; a switch now would be
            # undone by that late activation. It is applied in ``on_ready``.
            self._pending_pane = pane_id
            return
        tabs = self._query_base("#panes", TabbedContent)
        if tabs is not None:
            tabs.active = pane_id
            self._focus_pane(pane_id)

    def on_ready(self) -> None:
        """The first frame is up and the tabs have settled: show the pane asked for meanwhile (or the initial
        one) with the keyboard in it."""
        self._panes_ready = True
        tabs = self.query_one("#panes", TabbedContent)
        self.action_show_pane(self._pending_pane or tabs.active)
        self._pending_pane = None

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if event.pane.id:
            self._focus_pane(event.pane.id)  # a stale event is harmless: the focus lands only if still active

    def _focus_pane(self, pane_id: str) -> None:
        """Put the keyboard in the pane's main widget (arrow keys then move in its table, not the tabs).
        A pane opts in by defining ``focus_target()``.

        The focus lands after the messages already queued, and only if ``pane_id`` is still the active pane
        then: TabbedContent activates whichever pane holds the focus, so a late focus for a pane the user
        has left would switch back to it (and, with a second pane doing the same, loop for ever)."""
        self.call_later(self._land_focus, pane_id)

    def action_leave_field(self) -> None:
        """Esc in a text field (one its pane gave no other meaning): the keyboard goes back to the pane's main
        widget, so the number keys and the pane's keys act again instead of being typed."""
        if isinstance(self.focused, (Input, TextArea)):
            tabs = self._query_base("#panes", TabbedContent)
            if tabs is not None and tabs.active:
                self._land_focus(tabs.active)

    def _land_focus(self, pane_id: str) -> None:
        tabs = self._query_base("#panes", TabbedContent)
        pane = self._query_base(f"#{pane_id}", TabPane)
        if tabs is None or pane is None or tabs.active != pane_id:
            return
        for child in pane.children:
            focus_target = getattr(child, "focus_target", None)
            if callable(focus_target):
                target = focus_target()
                target.screen.set_focus(target)
                return

    def _query_base(self, selector: str, expect_type: type[WidgetT]) -> WidgetT | None:
        """A widget of the main screen, or None while it is not there: a modal is on top, or the app is
        starting or shutting down (tab events also fire then)."""
        try:
            return self.query_one(selector, expect_type)
        except (NoMatches, ScreenStackError):
            return None

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """The one place worker failures surface: a notification naming the job and the error."""
        if event.state is WorkerState.ERROR and event.worker.error is not None:
            what = event.worker.description or event.worker.name or "a background job"
            self.notify(f"{what} failed: {event.worker.error}", title="Error", severity="error", timeout=15,
                        markup=False)

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for pane_id, title, key in PANES:
            yield SystemCommand(f"Go to {title}", f"Show the {title} pane (key {key})",
                                lambda pane_id=pane_id: self.action_show_pane(pane_id))
        yield SystemCommand("Rescan Ollama models", "Read the Ollama store again (key r in the Models pane)",
                            lambda: self.query_one("#models-pane", ModelsPane).action_rescan())

    # Messages up, attributes down.
    def on_models_pane_model_selected(self, message: ModelsPane.ModelSelected) -> None:
        self.selected_model = message.model

    def on_dataset_pane_dataset_selected(self, message: DatasetPane.DatasetSelected) -> None:
        self.selected_dataset = message.path

    def on_train_pane_export_requested(self, message: TrainPane.ExportRequested) -> None:
        """A finished run asked for export: open the Export view on it."""
        from llamaforge_tui.tui.screens.export_screen import ExportScreen

        self.push_screen(ExportScreen(message.run_dir))

    def on_models_pane_download_requested(self, message: ModelsPane.DownloadRequested) -> None:
        """`d` on a model whose base needs downloading: show the cache pane and start the download there."""
        self.action_show_pane("cache")
        self.query_one("#cache-pane", CachePane).start_download(message.repo_id)

    def on_cache_pane_download_finished(self, message: CachePane.DownloadFinished) -> None:
        """A base model landed in the cache: the Models pane's "needs download" is now stale."""
        self.query_one("#models-pane", ModelsPane).action_rescan()


def make_app(settings: Settings, services: Services | None = None, *, monitor_run: str | Path | None = None) -> LlamaForgeApp:
    return LlamaForgeApp(settings, services, monitor_run=str(monitor_run) if monitor_run else None)
