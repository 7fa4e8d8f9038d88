"""Asked before deleting from the HF cache: what goes, the space it frees, and who still needs it."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label

from llamaforge_tui.core.fsutil import human_bytes
from llamaforge_tui.core.hub.cache import DeletionPlan


class ConfirmDelete(ModalScreen[bool]):
    """Dismisses with True (delete) or False (keep). Cancel has the focus, so Enter never deletes by accident."""

    DEFAULT_CSS = """
    ConfirmDelete {
        align: center middle;
    }
    ConfirmDelete > Vertical {
        width: 76;
        height: auto;
        padding: 1 2;
        border: thick $error;
        background: $surface;
    }
    ConfirmDelete .-flagged {
        color: $warning;
        text-style: bold;
    }
    ConfirmDelete #confirm-delete-buttons {
        height: auto;
        margin-top: 1;
        align-horizontal: right;
    }
    ConfirmDelete Button {
        margin-left: 2;
    }
    """

    BINDINGS = [
        Binding("y", "answer(True)", "Delete", id="confirm_delete.yes"),
        Binding("n,escape", "answer(False)", "Cancel", id="confirm_delete.no"),
    ]

    def __init__(self, plan: DeletionPlan, needed_by: Sequence[str] = ()) -> None:
        super().__init__()
        self.plan = plan
        self.needed_by = list(needed_by)

    def compose(self) -> ComposeResult:
        plan = self.plan
        if plan.whole_repo:
            what = f"Delete {plan.repo_id} ({plan.repo_type}) from the Hugging Face cache, all revisions?"
        else:
            revs = ", ".join(c[:12] for c in plan.commits)
            what = f"Delete {len(plan.commits)} revision(s) of {plan.repo_id}: {revs}?"
        with Vertical():
            yield Label(Text(what), id="confirm-delete-what")
            yield Label(Text(f"This frees {human_bytes(plan.freed_bytes)}. Blobs still used by a kept revision "
                             "stay on disk."), id="confirm-delete-frees")
            for reason in self.needed_by:
                yield Label(Text(f"Still needed: {reason}"), classes="-flagged confirm-delete-needed")
            with Horizontal(id="confirm-delete-buttons"):
                yield Button(Text("Cancel [n]"), id="confirm-delete-no", variant="primary")
                yield Button(Text("Delete [y]"), id="confirm-delete-yes", variant="error")

    def on_mount(self) -> None:
        self.query_one("#confirm-delete-no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id == "confirm-delete-yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)
