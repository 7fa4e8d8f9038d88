"""Errors that carry a message meant for the user.

The CLI prints ``str(error)`` as one line (no traceback unless ``--debug``); the TUI shows it in a
notification or modal. Anything that is *not* a ``LlamaForgeError`` is a bug and keeps its traceback.
"""

from __future__ import annotations


class LlamaForgeError(Exception):
    """A problem the user can act on: bad input, missing file, unsupported model, no server."""


class GgufError(LlamaForgeError):
    """A GGUF file is truncated, corrupt, or uses something we do not support."""


class StoreError(LlamaForgeError):
    """The Ollama store cannot be read."""


class DatasetError(LlamaForgeError):
    """A dataset cannot be loaded or has nothing to train on."""


class SourceError(LlamaForgeError):
    """A model source string is invalid or cannot be resolved."""


class ConfigError(LlamaForgeError):
    """A training/export configuration is invalid."""
