"""The Models pane's model-management actions: show, copy, rename, delete, pull and loaded models.

A mixin for ``ModelsPane`` (kept apart so the pane stays about listing). Everything but ``show`` needs the
Ollama server: while the pane knows the server is down those actions are disabled (dimmed in the footer) and
the status line says why and how to start it. Server calls run in thread workers; their answers come back to
the UI thread through ``call_from_thread``. Destructive actions confirm first, naming exactly what goes.
"""

from __future__ import annotations

from typing import Any

from textual import work
from textual.binding import Binding
from textual.widgets import DataTable

from llamaforge_tui.core.errors import LlamaForgeError
from llamaforge_tui.core.fsutil import human_bytes
from llamaforge_tui.core.ollama.client import OllamaServer
from llamaforge_tui.core.ollama.show import show_model
from llamaforge_tui.core.train.runs import plan_model_delete
from llamaforge_tui.tui.screens.confirm_action import ConfirmAction
from llamaforge_tui.tui.screens.model_show import ModelShowScreen
from llamaforge_tui.tui.screens.name_prompt import NamePrompt
from llamaforge_tui.tui.screens.pull_screen import PullScreen
from llamaforge_tui.tui.screens.running_models import RunningModelsScreen

SERVER_ACTIONS = frozenset({"copy_model", "rename_model", "delete_model", "pull_model", "running_models"})


class ModelsTable(DataTable):
    """The Models pane's table: ``enter`` (the table's own select) is shown in the footer as Show."""

    BINDINGS = [Binding("enter", "select_cursor", "Show", id="models.show_row")]


class ModelActions:
    """Mixed into ``ModelsPane``: expects ``app``, ``selected``, ``models``, ``server`` and ``start_scan``."""

    app: Any
    selected: Any
    models: list[Any]
    server: Any

    def start_scan(self) -> None:  # pragma: no cover - provided by the pane
        raise NotImplementedError

    # -- the server -------------------------------------------------------------------------------------------------
    def ollama_server(self) -> OllamaServer:
        factory = getattr(getattr(self.app, "services", None), "extra", {}).get("ollama_server")
        return factory() if factory else OllamaServer(settings=self.app.settings, timeout=15.0)

    def server_down_reason(self) -> str | None:
        """Why the server actions are off, or None while they are on (or the server's state is not known yet)."""
        if self.server is None or self.server.up:
            return None
        return "copy, rename, delete, pull, loaded: off until the server runs (`ollama serve`, then r)"

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in SERVER_ACTIONS and self.server_down_reason() is not None:
            return None  # shown dimmed in the footer; the status line says why
        return True

    def _fail(self, text: str) -> None:
        self.app.notify(text, title="Ollama", severity="error", timeout=10, markup=False)

    def _taken(self) -> set[str]:
        return {m.full_name for m in self.models}

    # -- show -------------------------------------------------------------------------------------------------------
    def action_show_model(self) -> None:
        if self.selected is not None:
            self._show_worker(self.selected)

    @work(thread=True, group="models-actions", name="models.show", description="Reading a model's Modelfile",
          exit_on_error=False)
    def _show_worker(self, model: Any) -> None:
        server = self.ollama_server() if self.server is None or self.server.up else \
            OllamaServer(self.server.host, timeout=1.0)
        try:
            info = show_model(model.full_name, self.app.settings, server=server, store_model=model)
        except LlamaForgeError as exc:
            self.app.call_from_thread(self._fail, str(exc))
            return
        self.app.call_from_thread(self.app.push_screen, ModelShowScreen(info))

    # -- copy and rename --------------------------------------------------------------------------------------------
    def action_copy_model(self) -> None:
        model = self.selected
        if model is None:
            return

        def chosen(dest: str | None) -> None:
            if dest:
                self._server_job(f"Copied {model.full_name} to {dest}", ("copy", model.full_name, dest))

        self.app.push_screen(NamePrompt(f"Copy {model.full_name} to:", f"{model.name}-copy:{model.tag}",
                                        taken=self._taken()), chosen)

    def action_rename_model(self) -> None:
        model = self.selected
        if model is None:
            return

        def chosen(dest: str | None) -> None:
            if not dest:
                return
            lines = [f"Copies {model.full_name} to {dest}, then deletes the name {model.full_name}.",
                     "No blob is deleted: the new name uses the same ones."]
            self.app.push_screen(
                ConfirmAction(f"Rename {model.full_name} to {dest}?", lines, confirm_label="Rename"),
                lambda ok: ok and self._server_job(f"Renamed {model.full_name} to {dest}",
                                                   ("copy", model.full_name, dest), ("delete", model.full_name)))

        self.app.push_screen(NamePrompt(f"Rename {model.full_name} to:", model.full_name, taken=self._taken()),
                             chosen)

    # -- delete -----------------------------------------------------------------------------------------------------
    def action_delete_model(self) -> None:
        if self.selected is not None:
            self._plan_delete_worker(self.selected)

    @work(thread=True, group="models-actions", name="models.plan_delete", description="Planning a model delete",
          exit_on_error=False)
    def _plan_delete_worker(self, model: Any) -> None:
        try:
            plan = plan_model_delete(self.app.settings, model.full_name)
        except LlamaForgeError as exc:
            self.app.call_from_thread(self._fail, str(exc))
            return
        self.app.call_from_thread(self._confirm_delete, model.full_name, plan)

    def _confirm_delete(self, name: str, plan: Any) -> None:
        if plan is None:
            lines, kept, flagged, freed = [f"{name} is not in the local store: the space it frees is unknown."], [], [], ""
        else:
            lines, kept, flagged = [f"Deletes the model {name} through the Ollama server; it "
                                    + plan.freed_line() + "."], plan.kept_lines(), plan.flagged
            freed = f", freed {human_bytes(plan.freed_bytes)}"
        self.app.push_screen(ConfirmAction(f"Delete {name}?", lines, kept=kept, flagged=flagged),
                             lambda ok: ok and self._server_job(f"Deleted {name}{freed}", ("delete", name)))

    # -- pull and loaded models -------------------------------------------------------------------------------------
    def action_pull_model(self) -> None:
        def chosen(name: str | None) -> None:
            if name:
                self.app.push_screen(PullScreen(name, self.ollama_server()),
                                     lambda pulled: pulled and self.start_scan())

        self.app.push_screen(NamePrompt("Pull which model? (for example gemma3:270m)"), chosen)

    def action_running_models(self) -> None:
        self.app.push_screen(RunningModelsScreen(self.ollama_server()))

    # -- one worker for the server's quick calls --------------------------------------------------------------------
    @work(thread=True, group="models-actions", name="models.server_call", description="Talking to the Ollama server",
          exit_on_error=False)
    def _server_job(self, done: str, *calls: tuple[str, ...]) -> None:
        server = self.ollama_server()
        try:
            for call, *args in calls:
                getattr(server, call)(*args)
        except LlamaForgeError as exc:
            self.app.call_from_thread(self._fail, str(exc))
        else:
            self.app.call_from_thread(self.app.notify, done, markup=False)
        self.app.call_from_thread(self.start_scan)
