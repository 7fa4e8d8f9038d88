"""The Chat pane's sampling row: system prompt, temperature, top-p, max tokens and seed, each an Input titled in its
border. Filled from the model's PARAMETERs when a target loads; read back (and checked) as ``ChatOptions``."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Input

from llamaforge_tui.core.errors import LlamaForgeError
from llamaforge_tui.core.infer.chat import ChatOptions

SETTINGS = (("system", "System prompt"), ("temperature", "Temp"), ("top_p", "Top-p"), ("max_tokens", "Max tokens"),
            ("seed", "Seed"))


class ChatSettings(Horizontal):
    def compose(self) -> ComposeResult:
        for key, label in SETTINGS:
            field = Input(placeholder=label, id=f"chat-{key.replace('_', '-')}", classes="chat-setting")
            field.border_title = label
            yield field

    def _field(self, key: str) -> Input:
        return self.query_one(f"#chat-{key.replace('_', '-')}", Input)

    def fill(self, defaults: Any) -> None:
        """From ``GenerationDefaults`` (the model's PARAMETERs and SYSTEM)."""
        for key, _ in SETTINGS:
            self._field(key).value = str(getattr(defaults, key))

    def options(self) -> ChatOptions:
        """The settings as options; LlamaForgeError naming what is wrong."""

        def value(key: str) -> str:
            return self._field(key).value.strip()

        try:
            return ChatOptions(max_tokens=int(value("max_tokens") or 256), temperature=float(value("temperature") or 0),
                               top_p=float(value("top_p") or 1), seed=int(value("seed") or 0),
                               system=value("system")).check()
        except ValueError as exc:
            raise LlamaForgeError(f"check the settings: {exc}") from None
