"""Pilot tests of the Chat pane with a fake backend: both columns fill side by side, esc stops an answer, the UI
keeps answering while a slow answer streams, eval prompts show their reference, model text stays plain (no markup),
and a transcript saves as chat JSONL."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Input, Label, Static

from llamaforge_tui.core.infer.chat import ChatBackend
from llamaforge_tui.core.infer.generation import Generation, GenerationDefaults
from llamaforge_tui.core.infer.run_data import ChatExample
from llamaforge_tui.core.infer.targets import ChatTarget
from llamaforge_tui.core.settings import Settings
from llamaforge_tui.tui.app import Services, make_app
from llamaforge_tui.tui.widgets.chat_column import ChatColumn
from llamaforge_tui.tui.widgets.chat_pane import ChatPane


class FakeBackend(ChatBackend):
    """Streams a scripted answer word by word; the base side says something else; ``delay`` per word."""

    name = "fake"

    def __init__(self, target: ChatTarget, delay: float = 0.0, words: int = 6) -> None:
        super().__init__(target, GenerationDefaults(temperature=0.3, top_p=0.9, max_tokens=99, seed=4,
                                                    system="Be brief."))
        self.can_compare = target.kind == "run"
        self.delay, self.words = delay, words
        self.seen: list[list[dict[str, str]]] = []
        self.closed = False

    def answer(self, messages, options, *, base=False, on_token=None, stop_event=None):
        self.seen.append(messages)
        word = "[red]base[/red]" if base else "tuned"
        out: list[str] = []
        finish = "stop"
        start = time.perf_counter()
        for i in range(self.words):
            if stop_event is not None and stop_event.is_set():
                finish = "cancelled"
                break
            piece = f"{word}{i} "
            out.append(piece)
            if on_token is not None:
                on_token(piece)
            if self.delay:
                time.sleep(self.delay)
        return Generation("".join(out), len(out), max(time.perf_counter() - start, 1e-3), finish)

    def side_label(self, side: str) -> str:
        return f"{side}: {self.target.label}"

    def close(self) -> None:
        self.closed = True


RUN = ChatTarget("run", "/runs/r1", "r1", path=Path("/runs/r1"))
OLLAMA = ChatTarget("ollama", "ollama:gemma3:270m", "gemma3:270m", name="gemma3:270m")


def make(delay: float = 0.0, words: int = 6) -> tuple[Any, dict[str, FakeBackend]]:
    opened: dict[str, FakeBackend] = {}

    def open_backend(target: ChatTarget, settings: Any, stop_event: threading.Event | None = None) -> FakeBackend:
        opened[target.text] = FakeBackend(target, delay, words)
        return opened[target.text]

    examples = [ChatExample(({"role": "user", "content": "Where does Pelgrin live?"},), "In Ostrava Bay.", 1)]
    services = Services(extra={"chat_list_targets": lambda settings: [RUN, OLLAMA], "chat_open_backend": open_backend,
                               "chat_examples": lambda key: ("eval", examples)})
    return make_app(Settings(), services), opened


async def until(pilot: Any, check: Any, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        await pilot.pause(0.02)


async def open_chat(pilot: Any, app: Any, target: int = 0) -> ChatPane:
    await pilot.press("5")
    pane = app.query_one(ChatPane)
    await until(pilot, lambda: len(pane.targets) == 2)
    pane.choose(pane.targets[target])
    await until(pilot, lambda: pane.backend is not None)
    return pane


@pytest.mark.parametrize("size", [(120, 40), (80, 24)])
async def test_compare_fills_both_columns_side_by_side(size: tuple[int, int]) -> None:
    app, opened = make()
    async with app.run_test(size=size) as pilot:
        pane = await open_chat(pilot, app)
        assert app.query_one("#chat-temperature", Input).value == "0.3"  # defaults from the model's PARAMETERs
        assert app.query_one("#chat-system", Input).value == "Be brief."
        await pilot.press("ctrl+b")
        assert pane.compare and app.query_one("#chat-base", ChatColumn).display
        prompt = app.query_one("#chat-prompt", Input)
        assert app.focused is prompt
        prompt.value = "hello?"
        await pilot.press("enter")
        await until(pilot, lambda: not pane.generating and "tokens/s" in app.query_one("#chat-base", ChatColumn).stats_text)
        tuned, base = app.query_one("#chat-tuned", ChatColumn), app.query_one("#chat-base", ChatColumn)
        assert "tuned5" in tuned.body_text and "hello?" in tuned.body_text
        assert "[red]base[/red]5" in base.body_text  # plain text: the brackets are shown, not parsed
        assert tuned.region.x < base.region.x and tuned.region.y == base.region.y  # side by side
        assert "tokens/s" in tuned.stats_text
        assert opened[RUN.text].seen[0][0] == {"role": "system", "content": "Be brief."}
        # A second turn: each side answers from its own history.
        prompt.value = "and then?"
        await pilot.press("enter")
        await until(pilot, lambda: len(opened[RUN.text].seen) == 4 and not pane.generating)
        assert opened[RUN.text].seen[3][2] == {"role": "assistant", "content": " ".join(f"[red]base[/red]{i}" for i in range(6)) + " "}
        await pilot.press("ctrl+l")
        assert "hello?" not in tuned.body_text and not pane.histories.get(RUN.text)


async def test_esc_stops_and_ui_stays_responsive_while_generating() -> None:
    app, _opened = make(delay=0.05, words=400)
    async with app.run_test(size=(120, 40)) as pilot:
        pane = await open_chat(pilot, app)
        prompt = app.query_one("#chat-prompt", Input)
        start = time.monotonic()
        await pilot.press("x", "y", "z", "backspace", "backspace", "backspace")
        idle = time.monotonic() - start  # the same keys with nothing generating: this machine's own pace
        prompt.value = "go"
        await pilot.press("enter")
        tuned = app.query_one("#chat-tuned", ChatColumn)
        await until(pilot, lambda: "tuned3" in tuned.answer)
        # The UI thread keeps serving input while the worker streams.
        start = time.monotonic()
        await pilot.press("a", "b", "c", "backspace", "backspace", "backspace")
        busy = time.monotonic() - start
        assert prompt.value == "" and busy < 3 * idle + 1.0, (busy, idle)
        await pilot.press("a", "b", "c")
        assert pane.generating
        await pilot.press("escape")
        await until(pilot, lambda: not pane.generating)
        assert "stopped" in tuned.stats_text
        assert "tuned399" not in tuned.body_text and "tuned3" in tuned.body_text  # the partial answer is kept
        assert "stopped" in tuned.stats_text or "cancelled" in tuned.stats_text


async def test_eval_prompt_shows_reference_and_regenerate_replaces_the_answer() -> None:
    app, opened = make()
    async with app.run_test(size=(120, 40)) as pilot:
        pane = await open_chat(pilot, app)
        await pilot.press("ctrl+n")
        prompt = app.query_one("#chat-prompt", Input)
        await until(pilot, lambda: prompt.value == "Where does Pelgrin live?")
        reference = app.query_one("#chat-reference", Static)
        assert reference.display and "In Ostrava Bay." in str(reference.render())
        await pilot.press("enter")
        await until(pilot, lambda: not pane.generating and pane.histories.get(RUN.text))
        assert reference.display  # kept under the answer
        await pilot.press("ctrl+r")
        await until(pilot, lambda: len(opened[RUN.text].seen) == 2 and not pane.generating)
        assert len(pane.histories[RUN.text].turns) == 1
        assert opened[RUN.text].seen[1] == opened[RUN.text].seen[0]


async def test_compare_is_refused_for_ollama_and_transcript_saves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMAFORGE_DATA_DIR", str(tmp_path))
    app, opened = make()
    async with app.run_test(size=(120, 40)) as pilot:
        pane = await open_chat(pilot, app, target=1)
        await pilot.press("ctrl+b")
        assert not pane.compare and not app.query_one("#chat-base", ChatColumn).display
        assert "compare needs a run" in str(app.query_one("#chat-status", Label).render())
        app.query_one("#chat-prompt", Input).value = "hi"
        await pilot.press("enter")
        await until(pilot, lambda: not pane.generating and pane.histories.get(OLLAMA.text))
        await pilot.press("ctrl+s")
        [saved] = list((tmp_path / "transcripts").glob("*.jsonl"))
        record = json.loads(saved.read_text(encoding="utf-8"))
        assert record["messages"][0] == {"role": "system", "content": "Be brief."}
        assert record["messages"][1:] == [{"role": "user", "content": "hi"},
                                          {"role": "assistant", "content": "".join(f"tuned{i} " for i in range(6))}]
        from llamaforge_tui.core.data.dataset import load_dataset

        assert load_dataset(saved).format == "chat"
    assert opened[OLLAMA.text].closed


async def test_real_tiny_run_answers_a_fact_only_with_the_adapter(tmp_path: Path) -> None:
    """The real backend on a tiny run trained on made-up facts: the tuned column holds the fact, the base's does
    not, and the Train pane's run is offered first once it has an adapter."""
    pytest.importorskip("torch")
    from tests.fixtures.chat_runs import FACTS, train_fact_run

    run = train_fact_run(tmp_path)
    app = make_app(Settings(runs_dir=str(run.parent)))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("5")
        pane = app.query_one(ChatPane)
        await until(pilot, lambda: bool(pane.targets))
        assert [t.label for t in pane.targets if t.kind == "run"] == ["tiny-facts"]
        pane.choose(pane.targets[0])
        await until(pilot, lambda: pane.backend is not None, timeout=60)
        app.query_one("#chat-temperature", Input).value = "0"
        app.query_one("#chat-max-tokens", Input).value = "48"
        await pilot.press("ctrl+b")
        question, answer = FACTS[1]
        app.query_one("#chat-prompt", Input).value = question
        await pilot.press("enter")
        base = app.query_one("#chat-base", ChatColumn)
        await until(pilot, lambda: not pane.generating and "tokens/s" in base.stats_text, timeout=60)
        tuned = app.query_one("#chat-tuned", ChatColumn)
        assert tuned.answer.strip() == answer and "teal" not in base.answer
        assert "adapter on" in str(tuned.query_one(".chat-column-title", Label).render())
        assert "adapter off" in str(base.query_one(".chat-column-title", Label).render())


async def test_esc_with_nothing_to_stop_leaves_the_message_field_so_number_keys_switch_panes() -> None:
    """Found in a tmux walkthrough: the message field had the keyboard, and esc (bound to stop) kept it there,
    so `4` was typed into the message instead of opening the Train pane."""
    from textual.widgets import Input, TabbedContent

    app, _ = make()
    async with app.run_test(size=(120, 40)) as pilot:
        pane = await open_chat(pilot, app)
        prompt = pane.query_one("#chat-prompt", Input)
        prompt.focus()
        await pilot.pause()
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.focused, Input)
        await pilot.press("4")
        await until(pilot, lambda: app.query_one("#panes", TabbedContent).active == "train")
        assert prompt.value == ""
