"""Ollama's Modelfile grammar: a reader that follows Ollama's own parser, and the quoting rules a writer
needs so that every value it writes reads back exactly.

A port of the state machine of ``ParseFile`` in Ollama's ``parser/parser.go``. The facts that matter:

- a command is a name, a space, and a value; a value ends at the first newline where the text so far,
  trimmed, is complete: bare, ``"..."`` or ``\"\"\"...\"\"\"`` (so a value may span lines inside quotes);
- quotes are stripped and never unescaped: there are no escape sequences at all;
- characters Go's ``strconv.IsPrint`` rejects are dropped without a word (control characters, U+00A0,
  U+200B, U+FEFF...), except space, tab, CR and LF; a value holding one cannot be written faithfully.
"""

from __future__ import annotations

import re
import unicodedata

from llamaforge_tui.core.errors import LlamaForgeError

COMMANDS = frozenset({"from", "license", "template", "system", "adapter", "draft", "renderer", "parser",
                      "parameter", "message", "requires"})
MESSAGE_ROLES = frozenset({"system", "user", "assistant"})
_KEEP = frozenset(" \t\r\n")  # not "printable" to Go, but kept inside a value
_PARAM_KEY = re.compile(r"[A-Za-z0-9_]+")
_EARLY_CLOSE = re.compile(r'"[ \t]*[\r\n]')  # inside "...": a quote then a newline ends the value there


class ModelfileSyntaxError(LlamaForgeError, ValueError):
    """Text that Ollama's parser would refuse."""


def go_printable(ch: str) -> bool:
    """Go's ``strconv.IsPrint``: letters, marks, numbers, punctuation, symbols and the ASCII space."""
    return ch == " " or unicodedata.category(ch)[0] in "LMNPS"


def lost_character(text: str) -> str | None:
    """The first character Ollama's parser would drop from a value, or None."""
    return next((ch for ch in text if ch not in _KEEP and not go_printable(ch)), None)


def quote_block(text: str) -> str | None:
    """``\"\"\"text\"\"\"``, or None when Ollama could not read it back exactly (it holds ``\"\"\"`` or a dropped
    character). Inside triple quotes only ``\"\"\"`` itself can close the value early."""
    if '"""' in text or lost_character(text) is not None:
        return None
    return '"""' + text + '"""'


def quote_value(text: str) -> str | None:
    """A one-argument value (a PARAMETER): ``"text"`` where that reads back exactly, else ``\"\"\"text\"\"\"``,
    else None. ``"..."`` fails when it would open with three quotes (text ``"`` or starting ``""``) or when
    the text has a quote right before a newline (the value would end there)."""
    if lost_character(text) is not None:
        return None
    quoted = '"' + text + '"'
    if not quoted.startswith('"""') and not _EARLY_CLOSE.search(text):
        return quoted
    return quote_block(text)


def param_key_ok(key: str) -> bool:
    return bool(_PARAM_KEY.fullmatch(key))


def _unquote(s: str) -> tuple[str, bool]:
    if s.startswith('"""'):
        return (s[3:-3], True) if len(s) >= 6 and s.endswith('"""') else ("", False)
    if s.startswith('"'):
        return (s[1:-1], True) if len(s) >= 2 and s.endswith('"') else ("", False)
    return s, True


def parse_commands(text: str) -> list[tuple[str, str]]:
    """``[(name, value), ...]`` exactly as Ollama's parser reads ``text`` (``FROM`` comes back as ``model``,
    a PARAMETER under its key, a MESSAGE as ``"role: content"``). Raises ``ModelfileSyntaxError``."""
    nil, name_s, value_s, param_s, message_s, comment_s = range(6)
    commands: list[tuple[str, str]] = []
    curr, line, name, role = nil, 1, "", ""
    buf: list[str] = []
    for ch in text.removeprefix("\ufeff"):
        if ch in "\r\n":
            line += 1
        out: str | None = ch  # the rune parseRuneForState hands back (None for Go's 0)
        if curr == nil:
            nxt = comment_s if ch == "#" else nil if ch in _KEEP else name_s
            out = ch if nxt == name_s else None
        elif curr == name_s:
            if ch.isascii() and ch.isalpha():
                nxt = name_s
            elif ch in " \t":
                nxt, out = value_s, None
            else:
                raise ModelfileSyntaxError(f"line {line}: invalid command")
        elif curr == value_s:
            nxt = nil if ch in _KEEP else value_s
        elif curr == param_s:
            if ch.isascii() and (ch.isalnum() or ch == "_"):
                nxt = param_s
            elif ch in " \t":
                nxt, out = value_s, None
            else:
                raise ModelfileSyntaxError(f"line {line}: invalid parameter name")
        elif curr == message_s:
            if ch.isascii() and ch.isalpha():
                nxt = message_s
            elif ch in " \t":
                nxt, out = value_s, None
            else:
                raise ModelfileSyntaxError(f"line {line}: invalid message role")
        else:  # comment
            nxt, out = (nil if ch in "\r\n" else comment_s), None
        if nxt != curr:
            word = "".join(buf)
            if curr == name_s:
                low = word.lower()
                if low not in COMMANDS:
                    raise ModelfileSyntaxError(f"line {line}: unknown command {word[:20]!r}")
                name = "model" if low == "from" else low
                nxt = param_s if low == "parameter" else message_s if low == "message" else nxt
            elif curr == param_s:
                name = word
            elif curr == message_s:
                if word not in MESSAGE_ROLES:
                    raise ModelfileSyntaxError(f"line {line}: message role must be system, user or assistant")
                role = word
            elif curr == value_s:
                value, ok = _unquote(word.strip(" \t\r\n"))
                if not ok or ch in " \t":
                    buf.append(ch)
                    continue
                commands.append((name, f"{role}: {value}" if role else value))
                role = ""
            buf = []
            curr = nxt
        if out is not None and go_printable(out):
            buf.append(out)
    if curr == value_s:
        value, ok = _unquote("".join(buf).strip(" \t\r\n"))
        if not ok:
            raise ModelfileSyntaxError("unexpected end of file inside a quoted value")
        commands.append((name, f"{role}: {value}" if role else value))
    elif curr not in (nil, comment_s):
        raise ModelfileSyntaxError("unexpected end of file")
    return commands
