"""The core stays headless: importing any core module loads no UI library and no torch/transformers."""

from __future__ import annotations

import importlib.util
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import llamaforge_tui.core

FORBIDDEN = ("textual", "rich", "torch", "transformers", "peft", "llamaforge_tui.tui")
ROOT = Path(__file__).resolve().parents[2]


def _core_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(llamaforge_tui.core.__path__, "llamaforge_tui.core."))


def test_core_modules_import_nothing_heavy() -> None:
    modules = _core_modules()
    assert "llamaforge_tui.core.ollama.store" in modules and "llamaforge_tui.core.gguf.info" in modules
    code = (
        "import importlib, sys, json\n"
        f"mods = {modules!r}\n"
        "for m in mods: importlib.import_module(m)\n"
        f"bad = sorted(n for n in sys.modules if n.split('.')[0] in {FORBIDDEN!r} or n.startswith('llamaforge_tui.tui'))\n"
        "print(json.dumps(bad))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", f"core imports pulled in: {proc.stdout.strip()}"


def test_cli_models_imports_no_ui() -> None:
    code = ("import sys; import llamaforge_tui.cli as c; c.build_parser(); "
            "print([n for n in ('textual', 'rich', 'torch', 'transformers') if n in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_import_linter_contract(tmp_path: Path) -> None:
    """pyproject's contract, run by import-linter. External forbidden modules (textual, rich) need
    ``include_external_packages``; it is added here if pyproject lacks it, so the contract is checked as written."""
    # Run from the interpreter running the tests, not whatever ``lint-imports`` is on PATH (or none is).
    if importlib.util.find_spec("importlinter") is None:
        pytest.skip("import-linter is not installed in this interpreter (pip install -e '.[dev]')")
    import tomli_w

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
    config.setdefault("include_external_packages", True)
    config_path = tmp_path / "importlinter.toml"
    config_path.write_text(tomli_w.dumps({"tool": {"importlinter": config}}), encoding="utf-8")
    code = ("import sys; from importlinter.cli import lint_imports; "
            f"sys.exit(lint_imports(config_filename={str(config_path)!r}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "KEPT" in proc.stdout and "BROKEN" not in proc.stdout
    assert "core domain packages in layers" in proc.stdout  # the layers contract was among those checked
