"""Smoke test: the real `llamaforge` in a real terminal (tmux 120x40), against a fixture Ollama store.

Keys are sent one at a time and every step waits on screen text (capture-pane), never on fixed sleeps.
A private tmux server (``-L``) keeps this test away from anyone else's sessions and inherits our environment
(the isolated HOME, config and cache folders, and the dead OLLAMA_HOST set by conftest).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures.ollama_store import StoreInfo, fixture_store, gemma_gguf  # noqa: F401

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


class Tmux:
    def __init__(self, socket: str, session: str) -> None:
        self.base = ["tmux", "-L", socket]
        self.session = session

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        # Something in the test process exports COLUMNS=80/LINES=24; the app must size itself from the pane.
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "TMUX")}
        return subprocess.run([*self.base, *args], capture_output=True, text=True, timeout=30, check=check, env=env)

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", self.session, check=False).stdout

    def alive(self) -> bool:
        return self.run("has-session", "-t", self.session, check=False).returncode == 0

    def send(self, key: str) -> None:
        self.run("send-keys", "-t", self.session, key)

    def wait_for(self, text: str, timeout: float = 90.0) -> str:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if text in " ".join(screen.split()):  # a phrase may wrap onto the next line
                return screen
            time.sleep(0.2)
        size = self.run("display", "-p", "-t", self.session, "#{window_width}x#{window_height}", check=False).stdout
        raise AssertionError(f"{text!r} never appeared on screen ({size.strip()}); last screen:\n{screen}")


def _llamaforge_command() -> list[str]:
    script = Path(sys.executable).with_name("llamaforge")
    if script.exists():
        return [str(script)]
    found = shutil.which("llamaforge")
    return [found] if found else [sys.executable, "-m", "llamaforge_tui"]


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    t = Tmux(f"lf-smoke-{os.getpid()}", "lf")
    yield t
    t.run("kill-server", check=False)


@pytest.mark.slow
def test_llamaforge_shows_the_gemma_row(tmux: Tmux, fixture_store: StoreInfo) -> None:
    command = shlex.join([*_llamaforge_command(), "--models-dir", str(fixture_store.root)])
    tmux.run("new-session", "-d", "-s", tmux.session, "-x", "120", "-y", "40", command)
    screen = tmux.wait_for("gemma3:270m")
    assert "Models [1]" in screen
    tmux.wait_for("Ollama server not reachable")  # the scan and the server check both finished

    tmux.send("/")
    tmux.wait_for("esc clears")  # the filter box is open and focused
    for key in "gemma":
        tmux.send(key)
    screen = tmux.wait_for("filter: 'gemma' (1 shown)")
    screen = tmux.wait_for("Q4_K_M")
    assert "gemma3" in screen and "google/gemma-3-270m-it" in screen
    tmux.send("Enter")  # back to the table
    tmux.send("Escape")  # clears the filter; wait before the next key, or ESC+q would read as alt+q
    tmux.wait_for("evil:latest")

    tmux.send("q")
    deadline = time.monotonic() + 90
    while tmux.alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not tmux.alive(), f"llamaforge did not exit on q; screen:\n{tmux.screen()}"
