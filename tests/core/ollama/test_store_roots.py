"""Where the store is looked for by default, per platform: Ollama's ~/.ollama/models everywhere (on Windows the
home is %USERPROFILE%), the Linux service user's folder only on Linux, and OLLAMA_MODELS first."""

from __future__ import annotations

from pathlib import Path

import pytest

from llamaforge_tui.core.ollama import store
from llamaforge_tui.core.settings import Settings


@pytest.mark.parametrize("platform, service", [("linux", True), ("darwin", False), ("win32", False)])
def test_default_roots_per_platform(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, platform: str,
                                    service: bool) -> None:
    monkeypatch.delenv("OLLAMA_MODELS", raising=False)
    monkeypatch.setattr(store.sys, "platform", platform)
    monkeypatch.setattr(store.Path, "home", classmethod(lambda cls: tmp_path / "home"))
    roots = store.default_roots(Settings())
    assert roots[0] == tmp_path / "home" / ".ollama" / "models"
    assert (Path("/usr/share/ollama/.ollama/models") in roots) is service


def test_ollama_models_env_comes_first(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "elsewhere"))
    roots = store.default_roots(Settings())
    assert roots[0] == tmp_path / "elsewhere" and roots[1] == Path.home() / ".ollama" / "models"


def test_windows_home_is_userprofile(monkeypatch: pytest.MonkeyPatch) -> None:
    """The assumption behind the Windows root: Path.home() there is ntpath.expanduser("~"), which reads
    %USERPROFILE% (checked with the Windows path module on this Linux machine)."""
    import ntpath

    monkeypatch.setenv("USERPROFILE", r"C:\Users\ada")
    monkeypatch.setenv("HOME", "/home/not-used-on-windows")
    assert ntpath.join(ntpath.expanduser("~"), ".ollama", "models") == r"C:\Users\ada\.ollama\models"
