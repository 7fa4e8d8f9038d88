"""The Chat pane's eval prompts: ctrl+n fills the prompt with the next example of the target run's eval split (or
its training data when it has none) and shows the reply it was trained towards under the columns.

A mixin of ``ChatPane`` (it uses the pane's widgets, messages and backend): the examples are read in a thread
worker (``core.infer.run_data.examples_for``, reusing the loaded session when it holds that run) and cached per run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual import work
from textual.widgets import Input, Static

from llamaforge_tui.core.errors import LlamaForgeError
from llamaforge_tui.core.infer.targets import run_dir_of


class ChatEvalPrompts:
    """Needs from the pane: ``target``, ``backend``, ``_backend_lock``, ``_examples``, ``_example_pos``,
    ``_reference``, ``_status``, ``_extra``, ``ExamplesReady`` and the DOM node API."""

    _pending_example: str | None = None

    def action_example(self) -> None:
        """Fill the prompt with the next example of the run's eval split (or training data), reference below."""
        run_dir = run_dir_of(self.target)
        if run_dir is None:
            self._status("eval prompts come from a run: pick a run or one of its exports")
            return
        key = str(run_dir)
        if key not in self._examples:
            self._status("reading the run's examples...")
            self._load_examples(key)
            return
        split, examples = self._examples[key]
        if not examples:
            self._status("the run's data has no chat examples to prompt with")
            return
        pos = self._example_pos.get(key, 0)
        example = examples[pos % len(examples)]
        self._example_pos[key] = pos + 1
        prompt = self.query_one("#chat-prompt", Input)
        prompt.value = example.prompt
        self._pending_example = example.prompt
        self._set_reference(f"reference ({split} example {pos % len(examples) + 1}/{len(examples)}): "
                            f"{example.reference}")
        prompt.focus()

    @work(thread=True, group="chat-examples", exclusive=True, exit_on_error=False, name="chat-examples",
          description="reading the run's eval examples")
    def _load_examples(self, key: str) -> None:
        from llamaforge_tui.core.infer.run_data import examples_for

        fn = self._extra("chat_examples")
        try:
            if fn is not None:
                split, examples = fn(key)
            else:
                with self._backend_lock:
                    session = getattr(self.backend, "session", None)
                    split, examples = examples_for(Path(key), getattr(self.app, "settings", None), session)
        except LlamaForgeError as exc:
            self.post_message(self.ExamplesReady(key, "", [], str(exc)))
            return
        self.post_message(self.ExamplesReady(key, split, examples))

    def on_chat_pane_examples_ready(self, message: Any) -> None:  # a ChatPane.ExamplesReady
        if message.error is not None:
            self._status(f"no eval prompts: {message.error}")
            return
        self._examples[message.key] = (message.split, message.examples)
        self.action_example()

    def _set_reference(self, text: str | None) -> None:
        self._reference = text
        ref = self.query_one("#chat-reference", Static)
        ref.update(Text(text or ""))
        ref.display = text is not None
        if text is None:
            self._pending_example = None

