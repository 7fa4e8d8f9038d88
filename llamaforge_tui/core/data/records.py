"""The one internal shape of a training record, and the checks that turn a raw row into it.

Every supported record shape (OpenAI-style chat, ShareGPT, alpaca, prompt/completion, raw text) is
normalised here into a :class:`Conversation` or a :class:`TextDoc`, so the trainer sees one shape.
A row that cannot be normalised becomes a :class:`RecordError` with a specific reason; the caller
keeps going, so one bad line never hides the good ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Union

from llamaforge_tui.core.fsutil import safe_text

ROLES = ("system", "user", "assistant")

# Record shapes, in the order detection tries them.
SHAPES = ("chat", "sharegpt", "alpaca", "prompt_completion", "text", "document")
SHAPE_ALIASES = {
    "messages": "chat", "openai": "chat", "conversation": "chat",
    "share_gpt": "sharegpt", "conversations": "sharegpt",
    "instruction": "alpaca",
    "completion": "prompt_completion", "prompt-completion": "prompt_completion", "prompt_completion": "prompt_completion",
    "raw": "text", "pretrain": "text", "paragraphs": "text",
    "whole": "document", "file": "document",
}
EXPECTED_SHAPES = (
    "'messages' (chat: [{role, content}]), 'conversations' (ShareGPT: [{from, value}]), "
    "'instruction' + 'output' (alpaca), 'prompt' + 'completion', or 'text' (raw text)"
)

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "system": "system"}


@dataclass(frozen=True, slots=True)
class Message:
    role: str  # "system" | "user" | "assistant"
    content: str

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True, slots=True)
class Conversation:
    """A validated conversation: optional system first, then user/assistant alternating, ending on assistant."""

    messages: tuple[Message, ...]
    line: int  # 1-based line (JSONL/text), row (CSV) or item start line (JSON) in the source file

    def as_dicts(self) -> list[dict[str, str]]:
        return [m.to_dict() for m in self.messages]


@dataclass(frozen=True, slots=True)
class TextDoc:
    """Raw text for continued pre-training: every token is trained."""

    text: str
    line: int


@dataclass(frozen=True, slots=True)
class RecordError:
    line: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "reason": self.reason}


Record = Union[Conversation, TextDoc]


class InvalidRecord(ValueError):
    """Raised by the normalisers; the reader turns it into a RecordError with the line number."""


def shown(value: Any, limit: int = 40) -> str:
    """A value from a record, for an error reason: short, one line, and valid UTF-8 (bad bytes escaped)."""
    text = value if isinstance(value, str) else type(value).__name__
    text = safe_text(text).replace("\r", "\\r").replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def normalize_shape(name: str) -> str:
    key = name.strip().lower().replace(" ", "_")
    if key in SHAPES:
        return key
    if key in SHAPE_ALIASES:
        return SHAPE_ALIASES[key]
    raise KeyError(name)


def detect_shape(row: Mapping[str, Any]) -> str | None:
    """Which record shape a (column-mapped) row has, from its keys; ``None`` when nothing fits."""
    keys = set(row)
    if "messages" in keys:
        return "chat"
    if "conversations" in keys:
        return "sharegpt"
    if "instruction" in keys and ("output" in keys or "response" in keys):
        return "alpaca"
    if "prompt" in keys and "completion" in keys:
        return "prompt_completion"
    if "text" in keys:
        return "text"
    return None


def apply_column_map(row: Mapping[str, Any], column_map: Mapping[str, str] | None) -> dict[str, Any]:
    """Rename the user's columns to ours: ``column_map`` is ``{our_field: their_column}``."""
    out = dict(row)
    if column_map:
        for ours, theirs in column_map.items():
            if theirs in row:
                out[ours] = row[theirs]
                if theirs != ours:
                    out.pop(theirs, None)
    return out


def _text(value: Any, what: str, *, required: bool = True) -> str:
    """A string field, or the text parts of an OpenAI content list; specific errors otherwise."""
    if value is None:
        if required:
            raise InvalidRecord(f"missing field {what}")
        return ""
    if isinstance(value, list):  # OpenAI content parts: [{"type": "text", "text": "..."}]
        parts = []
        for part in value:
            if isinstance(part, Mapping) and part.get("type", "text") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                raise InvalidRecord(f"{what} has a non-text content part (only text is supported)")
        value = "".join(parts)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise InvalidRecord(f"{what} must be a string, not {type(value).__name__}")
    try:  # readers decode with surrogateescape, so bad bytes show up as lone surrogates here
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRecord(f"{what} contains non-UTF-8 bytes (at character {exc.start})") from None
    return value


def _require_content(value: str, what: str) -> str:
    if not value.strip():
        raise InvalidRecord(f"empty content in {what}")
    return value


def check_order(messages: list[Message]) -> None:
    """Optional system first, then user/assistant alternating from user, ending with assistant."""
    if not messages:
        raise InvalidRecord("empty conversation (no messages)")
    start = 1 if messages[0].role == "system" else 0
    if start == len(messages):
        raise InvalidRecord("conversation has only a system message (nothing to train on)")
    for i, msg in enumerate(messages[start:], start=start):
        expected = "user" if (i - start) % 2 == 0 else "assistant"
        if msg.role != expected:
            prev = messages[i - 1].role if i else "start"
            where = "only allowed as the first message" if msg.role == "system" else f"expected {expected}"
            raise InvalidRecord(f"roles out of order: message {i + 1} is '{msg.role}' after '{prev}' ({where})")
    if messages[-1].role != "assistant":
        raise InvalidRecord(
            f"conversation ends with a '{messages[-1].role}' message (it must end with the assistant's reply)")


def _chat(row: Mapping[str, Any], key: str, role_key: str, content_key: str, role_names: Mapping[str, str] | None) -> list[Message]:
    raw = row.get(key)
    if raw is None:
        raise InvalidRecord(f"missing field '{key}'")
    if not isinstance(raw, list):
        raise InvalidRecord(f"'{key}' must be a list of messages, not {type(raw).__name__}")
    messages: list[Message] = []
    for i, item in enumerate(raw, start=1):
        if not isinstance(item, Mapping):
            raise InvalidRecord(f"message {i} must be an object with '{role_key}' and '{content_key}'")
        if role_key not in item:
            raise InvalidRecord(f"message {i} is missing field '{role_key}'")
        role_raw = item[role_key]
        if not isinstance(role_raw, str):
            role = None
        elif role_names is not None:
            role = role_names.get(role_raw.lower())
        else:
            role = role_raw if role_raw in ROLES else None
        if role is None:
            known = ", ".join(sorted(role_names)) if role_names is not None else ", ".join(ROLES)
            raise InvalidRecord(f"unknown role '{shown(role_raw)}' in message {i} (expected one of: {known})")
        if content_key not in item:
            raise InvalidRecord(f"message {i} ({role}) is missing field '{content_key}'")
        content = _text(item[content_key], f"message {i} ({role})")
        messages.append(Message(role, _require_content(content, f"message {i} ({role})")))
    check_order(messages)
    return messages


def _alpaca(row: Mapping[str, Any]) -> list[Message]:
    instruction = _require_content(_text(row.get("instruction"), "'instruction'"), "'instruction'")
    output_key = "response" if "output" not in row and "response" in row else "output"
    output = _require_content(_text(row.get(output_key), f"'{output_key}'"), f"'{output_key}'")
    extra = _text(row.get("input"), "'input'", required=False).strip()
    system = _text(row.get("system"), "'system'", required=False).strip()
    prompt = f"{instruction}\n\n{extra}" if extra else instruction
    messages = [Message("system", system)] if system else []
    return [*messages, Message("user", prompt), Message("assistant", output)]


def _prompt_completion(row: Mapping[str, Any]) -> list[Message]:
    prompt, completion = row.get("prompt"), row.get("completion")
    if isinstance(prompt, list):  # TRL's conversational prompt/completion
        msgs = _chat({"m": [*prompt, *(completion if isinstance(completion, list) else
                                          [{"role": "assistant", "content": completion}])]},
                     "m", "role", "content", None)
        return msgs
    p = _require_content(_text(prompt, "'prompt'"), "'prompt'")
    c = _require_content(_text(completion, "'completion'"), "'completion'")
    system = _text(row.get("system"), "'system'", required=False).strip()
    head = [Message("system", system)] if system else []
    return [*head, Message("user", p), Message("assistant", c)]


def row_to_record(row: Any, shape: str, line: int, column_map: Mapping[str, str] | None = None) -> Record:
    """Normalise one parsed row of a known shape; raises :class:`InvalidRecord` with a specific reason."""
    if not isinstance(row, Mapping):
        raise InvalidRecord(f"expected a JSON object, got {type(row).__name__}")
    row = apply_column_map(row, column_map)
    if shape == "chat":
        return Conversation(tuple(_chat(row, "messages", "role", "content", None)), line)
    if shape == "sharegpt":
        return Conversation(tuple(_chat(row, "conversations", "from", "value", SHAREGPT_ROLES)), line)
    if shape == "alpaca":
        return Conversation(tuple(_alpaca(row)), line)
    if shape == "prompt_completion":
        return Conversation(tuple(_prompt_completion(row)), line)
    if shape in ("text", "document"):
        text = _text(row.get("text"), "'text'")
        return TextDoc(_require_content(text, "'text'"), line)
    raise InvalidRecord(f"unknown record shape {shape!r}")
