"""Pieces of the Dataset pane that need no pane: path completion and record rendering as Content.

Record text is put into Content objects span by span (never parsed as markup), so a stray ``[`` in a
dataset shows as itself.
"""

from __future__ import annotations

import os

from textual.content import Content
from textual.suggester import Suggester

from llamaforge_tui.core.data.records import Record, TextDoc

TRAINED_STYLE = "bold $text-success on $success-muted"


class PathSuggester(Suggester):
    """Completes the last path component from the file system (folders get a trailing slash)."""

    def __init__(self) -> None:
        super().__init__(use_cache=False, case_sensitive=True)

    async def get_suggestion(self, value: str) -> str | None:
        return complete_path(value)


def complete_path(value: str) -> str | None:
    """``value`` completed with the first matching entry of its folder (hidden entries only when asked)."""
    if not value:
        return None
    expanded = os.path.expanduser(value)
    folder, prefix = os.path.split(expanded)
    try:
        names = sorted(e.name for e in os.scandir(folder or ".") if e.name.startswith(prefix)
                       and (prefix.startswith(".") or not e.name.startswith(".")))
    except OSError:
        return None
    if not names or names[0] == prefix:
        return None
    full = os.path.join(folder, names[0])
    suffix = "/" if os.path.isdir(full) else ""
    return value + names[0][len(prefix):] + suffix


def rendered_content(pieces: list[tuple[str, bool]]) -> Content:
    """The rendered example with the trained spans highlighted (the same spans the labels train)."""
    return Content.assemble(*((text, TRAINED_STYLE if trained else "") for text, trained in pieces))


def raw_content(record: Record) -> Content:
    """A record before any model is chosen: roles and contents, replies highlighted."""
    if isinstance(record, TextDoc):
        return Content(record.text)
    parts: list[tuple[str, str]] = []
    for m in record.messages:
        parts.append((f"[{m.role}]\n", "bold"))
        parts.append((m.content + "\n\n", TRAINED_STYLE if m.role == "assistant" else ""))
    return Content.assemble(*parts)
