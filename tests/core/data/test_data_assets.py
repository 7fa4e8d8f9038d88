"""The example datasets in assets/ load cleanly: the README's first-run walkthrough uses them."""

from __future__ import annotations

from pathlib import Path

from llamaforge_tui.core.data.dataset import Conversation, load_dataset

ASSETS = Path(__file__).resolve().parents[3] / "assets"


def test_chat_example() -> None:
    loaded = load_dataset(ASSETS / "chat_example.jsonl", policy="strict")
    assert loaded.format == "chat" and 200 <= len(loaded.records) <= 500 and not loaded.errors
    assert any(len(r.messages) >= 4 for r in loaded.records if isinstance(r, Conversation))  # multi-turn
    assert any(r.messages[0].role == "system" for r in loaded.records)
    assert (ASSETS / "chat_example.jsonl").stat().st_size < 200_000


def test_alpaca_example() -> None:
    loaded = load_dataset(ASSETS / "alpaca_example.jsonl", policy="strict")
    assert loaded.format == "alpaca" and 200 <= len(loaded.records) <= 500 and not loaded.errors
    assert any("\n\n" in r.messages[-2].content for r in loaded.records)  # records with an input field
    assert (ASSETS / "alpaca_example.jsonl").stat().st_size < 200_000
