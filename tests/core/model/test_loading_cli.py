"""`llamaforge inspect SOURCE`: text and --json output, --prompt top-5, errors as one line; gguf-quantized hook."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fixtures.ollama_store import StoreBuilder
from fixtures.tiny_models import session_factory
from llamaforge_tui.cli import main
from llamaforge_tui.core.model.loading import load_model
from llamaforge_tui.core.settings import Settings


def test_inspect_json_with_prompt(capsys: pytest.CaptureFixture[str]) -> None:
    path = session_factory().gguf("gemma3", "Q4_K_M")
    assert main(["inspect", str(path), "--json", "--prompt", "hello world", "--dtype", "float32"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["architecture"] == "gemma3" and data["dtype"] == "float32" and data["device"] == "cpu"
    assert data["parameter_count"] > 1_000_000 and data["load_seconds"] > 0 and data["peak_rss_bytes"] > 0
    assert data["source"]["gguf_path"] == str(path) and data["source"]["gguf_file_type"] == "Q4_K_M"
    top = data["next_token_top5"]
    assert len(top) == 5 and [r["logit"] for r in top] == sorted((r["logit"] for r in top), reverse=True)
    assert all({"id", "text", "logit"} <= set(r) for r in top)


def test_inspect_text_for_an_ollama_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gguf = session_factory().gguf("llama", "Q4_K_M")
    store = StoreBuilder(tmp_path / "models")
    store.write("tinyllama", "latest", store.manifest([store.gguf_layer(gguf)]))
    rc = main(["inspect", "ollama:tinyllama", "--models-dir", str(tmp_path / "models"), "--prompt", "The"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "architecture  llama" in out and "Q4_K_M" in out and "next token after 'The':" in out
    assert "weights gguf" in out and "peak memory" in out


def test_inspect_errors_are_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["inspect", "nonsense-source"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unknown model source") and err.count("\n") == 1
    assert main(["inspect", "ollama:absent", "--models-dir", str(tmp_path)]) == 1
    assert "not found" in capsys.readouterr().err


def test_gguf_quantized_weights_use_the_quantized_builder() -> None:
    """weights="gguf-quantized" hands the same skeleton and transforms to qlora.fill_quantized_model: the logits
    equal the dequantized model's (same values, computed on the fly)."""
    path = session_factory().gguf("llama", "Q4_K_M")
    plain = load_model(str(path), Settings(), dtype="float32", device="cpu")
    quant = load_model(str(path), Settings(), weights="gguf-quantized", dtype="float32", device="cpu")
    assert quant.description.weights == "gguf-quantized"
    assert quant.description.parameter_count == plain.description.parameter_count
    ids = plain.tokenizer("The quick brown fox", return_tensors="pt").input_ids
    with torch.no_grad():
        diff = (plain.model(ids).logits - quant.model(ids).logits).abs().max().item()
    assert diff <= 1e-4
