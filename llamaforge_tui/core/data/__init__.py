"""Datasets: file readers, records, chat templates (including an Ollama TEMPLATE), encoding with
assistant-only masks, and stats. May import ``gguf``, ``ollama`` and ``hub``."""
