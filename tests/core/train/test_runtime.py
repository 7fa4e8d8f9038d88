"""The training loop's surroundings: the heap handed back to the OS once loading is done."""

from __future__ import annotations

import gc
import sys

import pytest

from llamaforge_tui.core.train import runtime


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_release_free_memory_hands_freed_heap_back_on_glibc() -> None:
    psutil = pytest.importorskip("psutil")
    import ctypes

    if not hasattr(ctypes.CDLL(None), "malloc_trim"):
        pytest.skip("not glibc")
    runtime.release_free_memory()
    # many small objects live in the C heap (below glibc's mmap threshold); freed, glibc keeps the pages
    blocks = [bytearray(4000) for _ in range(60_000)]  # ~240 MB
    for b in blocks:
        b[::512] = b"\x01" * len(b[::512])
    keep = blocks[-1]
    del blocks
    gc.collect()
    before = psutil.Process().memory_info().rss
    assert runtime.release_free_memory() is True
    after = psutil.Process().memory_info().rss
    assert before - after > 100 * 1024 * 1024, (before, after)
    assert keep[0] == 1


def test_release_free_memory_is_called_before_the_heap_is_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(runtime, "release_free_memory", lambda: calls.append("trim") or True)
    monkeypatch.setattr(runtime.gc, "freeze", lambda: calls.append("freeze"))
    with runtime.long_lived_heap():
        pass
    assert calls == ["trim", "freeze"]


def test_release_free_memory_is_false_off_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime.sys, "platform", "darwin")
    assert runtime.release_free_memory() is False


def _child(code: str, env_extra: dict[str, str] | None = None) -> str:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    env.update(env_extra or {})
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


HUGE = ("import os, sys; from llamaforge_tui.core.train.runtime import prefer_huge_pages as p; {pre}"
        "print(p(), os.environ.get('THP_MEM_ALLOC_ENABLE'))")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="torch's huge-page switch is Linux only")
def test_huge_pages_are_asked_for_before_torch_only_and_never_over_the_users_setting() -> None:
    assert _child(HUGE.format(pre="")) == "True 1"
    assert _child(HUGE.format(pre=""), {"THP_MEM_ALLOC_ENABLE": "0"}) == "False 0"  # the user's choice stands
    assert _child(HUGE.format(pre="import torch; ")) == "False None"  # too late: torch read it already


def test_the_command_asks_for_huge_pages_before_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    from llamaforge_tui import cli
    from llamaforge_tui.core.train import runtime

    calls: list[str] = []
    monkeypatch.setattr(runtime, "prefer_huge_pages", lambda: calls.append("asked") or False)
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert calls == ["asked"]
