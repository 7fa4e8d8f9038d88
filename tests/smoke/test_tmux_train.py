"""Smoke test: the real `llamaforge` in tmux (120x40) trains a tiny model, driven from the keyboard.

The Train pane's form is filled by typing (c focuses it, Tab moves between fields, Esc leaves it),
t starts the run, and the test waits on screen text until the step counter reaches the end.
Keys go one at a time and every step waits on capture-pane, never on fixed sleeps.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.train_models import make_tiny_llama, write_qa_jsonl
from tests.smoke.test_tmux import Tmux, _llamaforge_command

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")]

STEPS = 8


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    t = Tmux(f"lf-train-{os.getpid()}", "lf")
    yield t
    t.run("kill-server", check=False)


def type_text(tmux: Tmux, text: str) -> None:
    tmux.run("send-keys", "-t", tmux.session, "-l", "--", text)  # literal: no key-name lookup


def replace_field(tmux: Tmux, text: str) -> None:
    """Type over a field just focused: Textual's Input selects its text on focus, so typing replaces it.
    (Not ctrl+u: right after a focus change Textual may still resolve key bindings for the old field.)"""
    type_text(tmux, text)


def focused_field(screen: str) -> str | None:
    """The label the form marks with "▸" (the focused field), or None."""
    match = re.search(r"▸ (\S+(?: \S+)*)", screen)
    return match.group(1) if match else None


def wait_until(tmux: Tmux, test, what: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    screen = ""
    while time.monotonic() < deadline:
        screen = tmux.screen()
        if test(screen):
            return screen
        time.sleep(0.2)
    raise AssertionError(f"never saw {what}; last screen:\n{screen}")


def test_train_a_tiny_model_from_the_keyboard(tmux: Tmux, tmp_path: Path) -> None:
    model = make_tiny_llama(tmp_path / "tiny-llama")
    data = write_qa_jsonl(tmp_path / "qa.jsonl", repeat=4)
    command = shlex.join(_llamaforge_command())
    tmux.run("new-session", "-d", "-s", tmux.session, "-x", "120", "-y", "40", command)
    tmux.wait_for("Models [1]")
    tmux.send("4")
    tmux.wait_for("c Edit config")  # the footer shows the pane's keys: the Train button has the focus
    tmux.send("c")  # focus the form's first field (Source), marked "▸ Source"
    # Keys typed right after a Tab could reach the field being left (Textual routes a key to the widget
    # focused when the key is read), so every Tab waits for the "▸" to move before typing.
    tmux.wait_for("▸ Source")
    replace_field(tmux, str(model))
    tmux.wait_for(model.name)
    for _ in range(2):  # Weights (a select) -> Dataset
        tmux.send("Tab")
    tmux.wait_for("▸ Dataset")
    replace_field(tmux, str(data))
    tmux.wait_for("qa.jsonl")
    for field, value in (("Max steps", str(STEPS)), ("Batch size", "2"), ("Max seq len", "64")):
        while (current := focused_field(tmux.screen())) != field:
            tmux.send("Tab")
            wait_until(tmux, lambda screen, before=current: focused_field(screen) not in (before, None),
                       "the focus to move")  # None: between the old label's blur and the new one's focus
        replace_field(tmux, value)
        wait_until(tmux, lambda screen, f=field, v=value: re.search(rf"▸ {f}\s+{v}\b", screen) is not None,
                   f"{field} = {value}")
    tmux.wait_for("examples ->")  # the plan: dataset read, steps per epoch
    tmux.send("Escape")
    tmux.wait_for("c Edit config")
    tmux.send("t")
    screen = tmux.wait_for(f"step {STEPS}/{STEPS}", timeout=240)
    screen = tmux.wait_for(": finished", timeout=60)
    assert "loss" in screen and "tok/s" in screen
    tmux.send("q")
    deadline = time.monotonic() + 60
    while tmux.alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not tmux.alive(), f"llamaforge did not exit on q; screen:\n{tmux.screen()}"
