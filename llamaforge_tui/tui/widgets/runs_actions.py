"""The Runs tab's actions: details, attach, mark and compare, delete, prune. A mixin for ``RunsList``.

``enter`` opens a run's details; ``a`` attaches the monitor (what ``enter`` used to do). ``space`` marks runs and
``v`` compares the marked ones. ``x`` deletes a run and ``p`` prunes its checkpoints: both are planned in a
worker (folder sizes take a moment), confirmed in a modal that says exactly what goes, and refused while the run
trains (its lock is held).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual import work
from textual.binding import Binding

from llamaforge_tui.core.errors import LlamaForgeError
from llamaforge_tui.core.fsutil import human_bytes
from llamaforge_tui.core.train import runs
from llamaforge_tui.core.train.checkpoint import complete_checkpoints
from llamaforge_tui.core.train.run_cleanup import (PrunePlan, RunDeletePlan, delete_run, plan_prune, plan_run_delete,
                                                   prune_checkpoints)
from llamaforge_tui.tui.screens.compare_screen import CompareScreen
from llamaforge_tui.tui.screens.confirm_action import ConfirmAction
from llamaforge_tui.tui.screens.prune_screen import ADAPTER_ONLY, PruneScreen
from llamaforge_tui.tui.screens.run_details_screen import RunDetailsScreen

MARK = "● "

RUNS_BINDINGS = [
    Binding("enter", "select_cursor", "Details", id="runs.details"),
    Binding("a", "attach", "Attach", id="runs.attach"),
    Binding("space", "mark", "Mark", id="runs.mark"),
    Binding("v", "compare", "Compare marked", id="runs.compare"),
    Binding("x,delete", "delete_run", "Delete run", id="runs.delete"),
    Binding("p", "prune", "Prune", id="runs.prune"),
]


class RunsActions:
    """Mixed into ``RunsList`` (a DataTable keyed by run folder path)."""

    app: Any
    marked: list[Path]

    def reload(self) -> None:  # pragma: no cover - provided by the list
        raise NotImplementedError

    # -- the cursor and the marks -----------------------------------------------------------------------------------
    def current_run(self) -> Path | None:
        table: Any = self
        if table.row_count == 0:
            return None
        try:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        except Exception:  # noqa: BLE001 - a cursor outside the table (empty or reloading)
            return None
        return Path(key) if key else None

    def apply_marks(self) -> None:
        """Show the marks after (re)filling the table; marks on runs no longer listed are dropped."""
        table: Any = self
        listed = {str(r.path) for r in getattr(self, "runs", [])}
        self.marked = [p for p in self.marked if str(p) in listed]
        if not table.ordered_columns:
            return
        column = table.ordered_columns[0].key
        for run in getattr(self, "runs", []):
            mark = MARK if run.path in self.marked else ""
            table.update_cell(str(run.path), column, Text(mark + run.run_id), update_width=bool(mark))

    def action_mark(self) -> None:
        path = self.current_run()
        if path is None:
            return
        if path in self.marked:
            self.marked.remove(path)
        else:
            self.marked.append(path)
        self.apply_marks()

    def action_compare(self) -> None:
        if len(self.marked) < 2:
            self.app.notify("Mark two runs or more with space, then press v to compare them.", markup=False)
            return
        self.app.push_screen(CompareScreen(list(self.marked)))

    # -- details and attach -----------------------------------------------------------------------------------------
    def show_details(self, path: Path) -> None:
        def chosen(choice: str | None) -> None:
            if choice == "attach":
                self._attach_run(path)
            elif choice == "delete":
                self._plan_delete(path)
            elif choice == "prune":
                self._ask_prune(path)

        self.app.push_screen(RunDetailsScreen(path), chosen)

    def action_attach(self) -> None:
        path = self.current_run()
        if path is not None:
            self._attach_run(path)

    def _attach_run(self, path: Path) -> None:
        self.post_message(self.RunChosen(path))  # type: ignore[attr-defined]

    # -- delete -----------------------------------------------------------------------------------------------------
    def action_delete_run(self) -> None:
        path = self.current_run()
        if path is not None:
            self._plan_delete(path)

    @work(thread=True, group="runs-actions", name="runs.plan_delete", description="Planning a run delete",
          exit_on_error=False)
    def _plan_delete(self, path: Path) -> None:
        try:
            plan = plan_run_delete(path)
        except LlamaForgeError as exc:
            self.app.call_from_thread(self._fail, str(exc))
            return
        self.app.call_from_thread(self._confirm_delete, plan)

    def _confirm_delete(self, plan: RunDeletePlan) -> None:
        lines = [f"Deletes the folder {plan.run_dir}",
                 f"with {plan.checkpoints} checkpoint(s), the adapter and {len(plan.exports)} exported file(s): "
                 f"frees {human_bytes(plan.size_bytes)}."]
        lines += [f"  {path}" for path in plan.exports]
        kept = [f"The Ollama model {name} stays (registered from this run; delete it in the Models pane)"
                for name in plan.registered]
        self.app.push_screen(ConfirmAction(f"Delete run {plan.run_dir.name}?", lines, kept=kept),
                             lambda ok: ok and self._delete(plan.run_dir))

    @work(thread=True, group="runs-actions", name="runs.delete", description="Deleting a run", exit_on_error=False)
    def _delete(self, path: Path) -> None:
        try:
            freed = delete_run(path)
        except LlamaForgeError as exc:
            self.app.call_from_thread(self._fail, str(exc))
            return
        self.app.call_from_thread(self.app.notify, f"Deleted run {path.name}: freed {human_bytes(freed)}",
                                  markup=False)
        self.app.call_from_thread(self.reload)

    # -- prune ------------------------------------------------------------------------------------------------------
    def action_prune(self) -> None:
        path = self.current_run()
        if path is not None:
            self._ask_prune(path)

    def _ask_prune(self, path: Path) -> None:
        steps = [s for s, _ in complete_checkpoints(path)]
        if not steps:
            self.app.notify(f"{path.name} has no checkpoints to prune.", markup=False)
            return

        def chosen(keep: int | str | None) -> None:
            if keep is not None:
                self._plan_prune(path, None if keep == ADAPTER_ONLY else int(keep))

        self.app.push_screen(PruneScreen(path.name, steps, (path / runs.ADAPTER_DIR).is_dir()), chosen)

    @work(thread=True, group="runs-actions", name="runs.plan_prune", description="Planning a prune",
          exit_on_error=False)
    def _plan_prune(self, path: Path, keep: int | None) -> None:
        try:
            plan = plan_prune(path, keep)
        except LlamaForgeError as exc:
            self.app.call_from_thread(self._fail, str(exc))
            return
        self.app.call_from_thread(self._confirm_prune, plan)

    def _confirm_prune(self, plan: PrunePlan) -> None:
        if not plan.remove:
            self.app.notify(f"Nothing to prune in {plan.run_dir.name}.", markup=False)
            return
        lines = [f"Removes checkpoint step {step}: {path} ({human_bytes(size)})" for step, path, size in plan.remove]
        lines.append(f"Frees {human_bytes(plan.freed_bytes)}.")
        kept = [f"Keeps checkpoint step {s}" for s in plan.keep]
        kept.append("Keeps the final adapter" if (plan.run_dir / runs.ADAPTER_DIR).is_dir() else "No final adapter yet")
        self.app.push_screen(ConfirmAction(f"Prune the checkpoints of {plan.run_dir.name}?", lines, kept=kept,
                                           confirm_label="Prune"),
                             lambda ok: ok and self._prune(plan))

    @work(thread=True, group="runs-actions", name="runs.prune", description="Pruning checkpoints", exit_on_error=False)
    def _prune(self, plan: PrunePlan) -> None:
        try:
            freed = prune_checkpoints(plan)
        except LlamaForgeError as exc:
            self.app.call_from_thread(self._fail, str(exc))
            return
        self.app.call_from_thread(self.app.notify, f"Pruned {plan.run_dir.name}: freed {human_bytes(freed)}",
                                  markup=False)
        self.app.call_from_thread(self.reload)

    def _fail(self, text: str) -> None:
        self.app.notify(text, title="Runs", severity="error", timeout=10, markup=False)
