"""One side of the Chat pane: a labelled column holding that side's conversation, the answer streaming into it,
and the answer's tokens/s. Model text is shown as plain ``Text`` (never parsed as markup)."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Label, Static


class ChatColumn(Vertical):
    """``side``: tuned or base. The owner calls ``show``/``begin``/``append``/``finish``; nothing here blocks."""

    def __init__(self, side: str, title: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.side = side
        self._title = title or side
        self._done: list[tuple[str, str]] = []  # finished (user, answer) pairs shown above the live answer
        self._user: str | None = None
        self._answer = ""
        self.stats_text = ""

    def compose(self) -> ComposeResult:
        yield Label(Text(self._title), classes="chat-column-title")
        with VerticalScroll(classes="chat-column-scroll"):
            yield Static(Text(""), classes="chat-column-body")
        yield Label(Text(""), classes="chat-column-stats")

    @property
    def answer(self) -> str:
        """The text of the answer being written (or the last one)."""
        if self._user is not None:
            return self._answer
        return self._done[-1][1] if self._done else ""

    @property
    def body_text(self) -> str:
        return self._conversation().plain

    def set_title(self, title: str) -> None:
        self._title = title
        if self.is_mounted:
            self.query_one(".chat-column-title", Label).update(Text(title))

    def show(self, pairs: list[tuple[str, str]], *, keep_stats: bool = False) -> None:
        """Show a whole conversation (after a target switch, a clear, a regenerate or a stopped turn)."""
        self._done = list(pairs)
        self._user, self._answer = None, ""
        if not keep_stats:
            self._set_stats("")
        self._refresh_body()

    def begin(self, user: str) -> None:
        self._user, self._answer = user, ""
        self._set_stats("writing...")
        self._refresh_body()

    def append(self, text: str) -> None:
        self._answer += text
        self._refresh_body()

    def finish(self, tokens: int, tokens_per_second: float, finish: str) -> None:
        if self._user is not None:
            self._done.append((self._user, self._answer))
        self._user = None
        note = {"stop": "", "length": ", max tokens", "cancelled": ", stopped"}.get(finish, f", {finish}")
        self._set_stats(f"{tokens} tokens, {tokens_per_second:.1f} tokens/s{note}")
        self._refresh_body()

    def fail(self, message: str) -> None:
        self._user = None
        self._set_stats(message)
        self._refresh_body()

    def _set_stats(self, text: str) -> None:
        self.stats_text = text
        if self.is_mounted:
            self.query_one(".chat-column-stats", Label).update(Text(text))

    def _conversation(self) -> Text:
        out = Text()
        turns = [*self._done, *([(self._user, self._answer)] if self._user is not None else [])]
        for i, (user, answer) in enumerate(turns):
            if i:
                out.append("\n\n")
            out.append("you: ", style="bold")
            out.append(user)
            out.append("\n")
            out.append(answer)
        return out

    def _refresh_body(self) -> None:
        if not self.is_mounted:
            return
        self.query_one(".chat-column-body", Static).update(self._conversation())
        self.query_one(".chat-column-scroll", VerticalScroll).scroll_end(animate=False)
