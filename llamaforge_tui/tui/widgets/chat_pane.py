"""The Chat pane: talk to a run, an export or an Ollama model, with base vs fine-tuned side by side.

A target picker (runs with an adapter, their exports, the Ollama store's models; the Train pane's run first once
it has saved an adapter), a compare toggle, sampling settings that start from the model's PARAMETERs, two labelled
columns the answers stream into, and the prompt line. Loading and generation run in thread workers that post
messages back; the model is touched only there (``core.infer.chat``). One model is loaded at a time; each target
keeps its own conversation. Tests replace the core calls through ``app.services.extra`` (``chat_list_targets``,
``chat_open_backend``, ``chat_examples``).
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Checkbox, Input, Label, Select, Static
from textual.worker import get_current_worker

from llamaforge_tui.core.errors import LlamaForgeError
from llamaforge_tui.core.infer.chat import (
    ChatHistory,
    ChatOptions,
    ask,
    save_transcript,
)
from llamaforge_tui.core.infer.targets import ChatTarget
from llamaforge_tui.tui.widgets.chat_column import ChatColumn
from llamaforge_tui.tui.widgets.chat_eval_prompts import ChatEvalPrompts
from llamaforge_tui.tui.widgets.chat_settings import ChatSettings


class ChatPane(ChatEvalPrompts, Vertical):
    BINDINGS = [
        Binding("escape", "escape", "Stop", id="chat.stop"),
        Binding("ctrl+r", "regenerate", "Regenerate", id="chat.regenerate"),
        Binding("ctrl+l", "clear", "Clear", id="chat.clear"),
        Binding("ctrl+n", "example", "Eval prompt", id="chat.example"),
        Binding("ctrl+b", "toggle_compare", "Compare", id="chat.compare"),
        Binding("ctrl+s", "save", "Save transcript", id="chat.save"),
        Binding("ctrl+t", "pick_target", "Target", id="chat.target"),
        Binding("f5", "refresh_targets", "Refresh targets", id="chat.refresh"),
    ]

    class TargetsListed(Message):
        def __init__(self, targets: list[ChatTarget]) -> None:
            super().__init__()
            self.targets = targets

    class BackendReady(Message):
        def __init__(self, target: ChatTarget, backend: Any, error: str | None = None) -> None:
            super().__init__()
            self.target, self.backend, self.error = target, backend, error

    class TokenArrived(Message):
        def __init__(self, side: str, text: str) -> None:
            super().__init__()
            self.side, self.text = side, text

    class AnswerDone(Message):
        def __init__(self, side: str, result: Any) -> None:
            super().__init__()
            self.side, self.result = side, result

    class TurnEnded(Message):
        def __init__(self, error: str | None = None) -> None:
            super().__init__()
            self.error = error

    class ExamplesReady(Message):
        def __init__(self, key: str, split: str, examples: list[Any], error: str | None = None) -> None:
            super().__init__()
            self.key, self.split, self.examples, self.error = key, split, examples, error

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.targets: list[ChatTarget] = []
        self.target: ChatTarget | None = None
        self.backend: Any = None
        self.histories: dict[str, ChatHistory] = {}
        self.generating = False
        self._backend_lock = threading.Lock()  # held while a worker uses or replaces the backend
        self._examples: dict[str, tuple[str, list[Any]]] = {}
        self._example_pos: dict[str, int] = {}
        self._reference: str | None = None

    # -- layout -------------------------------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        with Horizontal(id="chat-top"):
            yield Select([], prompt="pick a run, an export or an Ollama model", id="chat-target", allow_blank=True)
            yield Checkbox("compare with base", id="chat-compare")
        yield ChatSettings(id="chat-settings")
        with Horizontal(id="chat-columns"):
            yield ChatColumn("tuned", "tuned", id="chat-tuned")
            yield ChatColumn("base", "base (adapter off)", id="chat-base")
        yield Static(Text(""), id="chat-reference")
        yield Label(Text("pick a target (ctrl+t)"), id="chat-status")
        yield Input(placeholder="message (enter sends, esc stops, ctrl+n: next eval prompt)", id="chat-prompt")

    def on_mount(self) -> None:
        self.query_one("#chat-base", ChatColumn).display = False
        self.query_one("#chat-reference", Static).display = False
        self.action_refresh_targets()

    def on_show(self) -> None:
        """Each visit re-lists the targets: a run trained (or an export written) meanwhile shows up at once."""
        self.action_refresh_targets()

    def focus_target(self) -> Widget:
        return self.query_one("#chat-prompt", Input)

    def _extra(self, name: str) -> Any:
        return (getattr(getattr(self.app, "services", None), "extra", None) or {}).get(name)

    def _status(self, text: str) -> None:
        self.query_one("#chat-status", Label).update(Text(text))

    @property
    def compare(self) -> bool:
        return bool(self.query_one("#chat-compare", Checkbox).value) and bool(self.target and self.target.can_compare)

    def _columns(self) -> tuple[ChatColumn, ChatColumn]:
        return self.query_one("#chat-tuned", ChatColumn), self.query_one("#chat-base", ChatColumn)

    # -- targets ------------------------------------------------------------------------------------------------------
    def action_refresh_targets(self) -> None:
        self._list_targets(self._train_run())

    def _train_run(self) -> Path | None:
        """The Train pane's current run, offered first once it has an adapter."""
        from llamaforge_tui.tui.widgets.train_pane import TrainPane

        for pane in self.app.query(TrainPane):
            return pane.current_run_dir
        return None

    @work(thread=True, group="chat-targets", exclusive=True, exit_on_error=False, name="chat-targets",
          description="listing chat targets")
    def _list_targets(self, train_run: Path | None) -> None:
        from llamaforge_tui.core.infer.generation import ChatError
        from llamaforge_tui.core.infer.run_data import find_adapter
        from llamaforge_tui.core.infer.targets import list_targets

        fn = self._extra("chat_list_targets") or list_targets
        targets = list(fn(getattr(self.app, "settings", None)))
        if train_run is not None:
            try:
                find_adapter(Path(train_run))
                first = ChatTarget("run", str(train_run), f"{Path(train_run).name} (Train pane)", path=Path(train_run))
                targets = [first, *[t for t in targets if t.path != Path(train_run)]]
            except ChatError:
                pass
        self.post_message(self.TargetsListed(targets))

    def on_chat_pane_targets_listed(self, message: TargetsListed) -> None:
        self.targets = message.targets
        select = self.query_one("#chat-target", Select)
        kinds = {"run": "run", "gguf": "export", "ollama": "ollama"}
        select.set_options([(f"{kinds[t.kind]}: {t.label}", i) for i, t in enumerate(self.targets)])
        if self.target is not None:
            for i, t in enumerate(self.targets):
                if t.text == self.target.text:
                    with select.prevent(Select.Changed):
                        select.value = i
        if not self.targets:
            self._status("nothing to chat with yet: train a run, or start Ollama with a model (f5 refreshes)")

    @on(Select.Changed, "#chat-target")
    def _target_chosen(self, event: Select.Changed) -> None:
        if not isinstance(event.value, int) or event.value >= len(self.targets):
            return
        self.choose(self.targets[event.value])

    def choose(self, target: ChatTarget) -> None:
        """Switch to ``target``: stop a running answer, load its model in a worker, show its conversation."""
        if self.target is not None and target.text == self.target.text and self.backend is not None:
            return
        self.action_stop()
        self.target = target
        self.backend = None
        select = self.query_one("#chat-target", Select)
        index = next((i for i, t in enumerate(self.targets) if t.text == target.text), None)
        if index is not None and select.value != index:
            with select.prevent(Select.Changed):
                select.value = index
        self._show_history()
        self._status(f"loading {target.label}...")
        self._load(target)

    @work(thread=True, group="chat-load", exclusive=True, exit_on_error=False, name="chat-load",
          description="loading the chat model")
    def _load(self, target: ChatTarget) -> None:
        from llamaforge_tui.core.infer.chat import open_backend

        opener = self._extra("chat_open_backend") or open_backend
        stop = get_current_worker().cancelled_event
        with self._backend_lock:
            old, self.backend = self.backend, None
            if old is not None:
                old.close()
            try:
                backend = opener(target, getattr(self.app, "settings", None), stop_event=stop)
            except LlamaForgeError as exc:
                self.post_message(self.BackendReady(target, None, str(exc)))
                return
        self.post_message(self.BackendReady(target, backend))

    def on_chat_pane_backend_ready(self, message: BackendReady) -> None:
        if self.target is None or message.target.text != self.target.text:
            if message.backend is not None:  # a late load for a target the user has left
                message.backend.close()
            return
        if message.error is not None:
            self._status(f"cannot load {message.target.label}: {message.error}")
            self.notify(message.error, title="Chat", severity="error", markup=False)
            return
        self.backend = message.backend
        self.query_one(ChatSettings).fill(self.backend.defaults)
        tuned, base = self._columns()
        tuned.set_title(self.backend.side_label("tuned"))
        base.set_title(self.backend.side_label("base"))
        self._sync_compare()
        self._status(f"ready: {self.backend.target.label} ({self.backend.name})")

    # -- options ------------------------------------------------------------------------------------------------------
    def options(self) -> ChatOptions:
        return self.query_one(ChatSettings).options()

    @on(Checkbox.Changed, "#chat-compare")
    def _sync_compare(self) -> None:
        base = self.query_one("#chat-base", ChatColumn)
        base.display = self.compare
        if self.query_one("#chat-compare", Checkbox).value and self.target is not None and not self.target.can_compare:
            self._status("compare needs a run: exports and Ollama models have no adapter to switch off")

    def action_toggle_compare(self) -> None:
        box = self.query_one("#chat-compare", Checkbox)
        box.value = not box.value

    def action_pick_target(self) -> None:
        self.query_one("#chat-target", Select).focus()

    # -- sending ------------------------------------------------------------------------------------------------------
    @on(Input.Submitted, "#chat-prompt")
    def _submitted(self, event: Input.Submitted) -> None:
        if self.send(event.value):
            event.input.value = ""

    def send(self, text: str, *, reference: str | None = None) -> bool:
        if not text.strip():
            return False
        if self.generating:
            self._status("still writing: esc stops it")
            return False
        if self.backend is None or self.target is None:
            self._status("no model loaded yet: pick a target (ctrl+t)" if self.target is None else "still loading...")
            return False
        try:
            options = self.options()
        except LlamaForgeError as exc:
            self._status(str(exc))
            return False
        if reference is None and self._reference is not None and text != self._pending_example:
            self._set_reference(None)
        self.generating = True
        self.add_class("-generating")
        compare = self.compare
        for column in self._columns()[: 2 if compare else 1]:
            column.begin(text)
        self._status("writing... (esc stops)")
        self._generate(self.backend, self.histories.setdefault(self.target.text, ChatHistory()), text, options,
                       compare)
        return True

    @work(thread=True, group="chat-generate", exclusive=True, exit_on_error=False, name="chat-generate",
          description="generating an answer")
    def _generate(self, backend: Any, history: ChatHistory, text: str, options: ChatOptions, compare: bool) -> None:
        stop = get_current_worker().cancelled_event
        error = None
        with self._backend_lock:
            try:
                ask(backend, history, text, options, compare=compare, stop_event=stop,
                    on_token=lambda side, piece: self.post_message(self.TokenArrived(side, piece)),
                    on_done=lambda side, result: self.post_message(self.AnswerDone(side, result)))
            except LlamaForgeError as exc:
                error = str(exc)
        self.post_message(self.TurnEnded(error))

    def on_chat_pane_token_arrived(self, message: TokenArrived) -> None:
        self.query_one(f"#chat-{message.side}", ChatColumn).append(message.text)

    def on_chat_pane_answer_done(self, message: AnswerDone) -> None:
        r = message.result
        self.query_one(f"#chat-{message.side}", ChatColumn).finish(r.tokens, r.tokens_per_second, r.finish)

    def on_chat_pane_turn_ended(self, message: TurnEnded) -> None:
        self.generating = False
        self.remove_class("-generating")
        if message.error is not None:
            for column in self._columns():
                if column.stats_text == "writing...":
                    column.fail(message.error)
            self._status(message.error)
            self.notify(message.error, title="Chat", severity="error", markup=False)
            self._show_history(keep_stats=True)
            return
        self._show_history(keep_stats=True)
        self._status(f"ready: {self.target.label if self.target else ''}")

    def action_stop(self) -> None:
        for worker in self.workers:
            if worker.group == "chat-generate" and worker.is_running:
                worker.cancel()
                self._status("stopping...")

    def action_escape(self) -> None:
        """Esc stops an answer being written; with none, it leaves the text field for the answers, so the number
        keys switch panes again (as esc does in every other pane's fields)."""
        if any(w.group == "chat-generate" and w.is_running for w in self.workers):
            self.action_stop()
        elif isinstance(self.app.focused, Input):
            self.query_one("#chat-tuned .chat-column-scroll", VerticalScroll).focus()

    def action_regenerate(self) -> None:
        if self.generating or self.target is None:
            return
        history = self.histories.get(self.target.text)
        turn = history.pop() if history else None
        if turn is None:
            self._status("nothing to regenerate yet")
            return
        self._show_history()
        self.send(turn.user, reference=self._reference)

    def action_clear(self) -> None:
        if self.generating:
            self.action_stop()
        if self.target is not None:
            self.histories.pop(self.target.text, None)
        self._set_reference(None)
        self._show_history()
        self._status("new conversation")

    def _show_history(self, *, keep_stats: bool = False) -> None:
        history = self.histories.get(self.target.text) if self.target is not None else None
        turns = history.turns if history else []
        for column in self._columns():
            column.show([(t.user, t.answers[column.side].text) for t in turns if column.side in t.answers],
                        keep_stats=keep_stats)

    # -- transcripts ----------------------------------------------------------------------------------------------------
    def action_save(self) -> None:
        """Save this target's conversation (the tuned side) as chat JSONL under <data dir>/transcripts."""
        from llamaforge_tui.core.settings import data_dir

        if self.target is None or not self.histories.get(self.target.text):
            self._status("nothing to save yet")
            return
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", self.target.label).strip("-")[:60] or "chat"
        path = data_dir() / "transcripts" / f"{slug}-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
        try:
            save_transcript(path, self.histories[self.target.text], system=self.options().system)
        except LlamaForgeError as exc:
            self._status(str(exc))
            return
        self._status(f"saved {path}")
        self.notify(f"transcript saved to {path} (chat JSONL: usable as training data)", title="Chat", markup=False)

    def on_unmount(self) -> None:
        for worker in self.workers:
            worker.cancel()
        if self.backend is not None:
            self.backend.close()
