"""weights="gguf-quantized" end to end: real converter GGUFs of every architecture, the real Gemma 3 270M, the trainer.

The reference everywhere is the dequantized path (weights="gguf"), which itself is proven against transformers and
llama.cpp by the sources tests.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from llamaforge_tui.core.train.events import RunFinished, StepLogged
from llamaforge_tui.core.gguf.file import GgufFile
from llamaforge_tui.core.model.loading import load_model
from llamaforge_tui.core.model.quantized import QuantEmbedding, QuantLinear, base_weight_bytes
from tests.core.gguf.test_quants import gemma_gguf_path
from tests.fixtures.tiny_models import session_factory

ARCHES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3")


def _gguf_tensor_bytes(path: Path) -> int:
    with GgufFile(path) as gf:
        return sum(t.nbytes for t in gf.tensors)


def _compare(path: Path, ids: torch.Tensor) -> tuple[float, object]:
    quant = load_model(str(path), None, weights="gguf-quantized", dtype="float32", device="cpu")
    dense = load_model(str(path), None, weights="gguf", dtype="float32", device="cpu")
    with torch.no_grad():
        diff = (quant.model(ids).logits - dense.model(ids).logits).abs().max().item()
    return diff, quant


def _assert_quantized_model(loaded: object, path: Path) -> None:
    model = loaded.model  # type: ignore[attr-defined]
    assert loaded.description.weights == "gguf-quantized"  # type: ignore[attr-defined]
    assert isinstance(model.get_input_embeddings(), QuantEmbedding)
    assert isinstance(model.get_output_embeddings(), QuantLinear)
    linears = [m for n, m in model.named_modules() if n.endswith(("q_proj", "o_proj", "down_proj", "qkv_proj"))]
    assert linears and all(isinstance(m, QuantLinear) for m in linears)
    assert base_weight_bytes(model) <= 1.15 * _gguf_tensor_bytes(path)


@pytest.mark.parametrize(
    ("arch", "qtype"),
    [(a, "Q4_K_M") for a in ARCHES]
    + [("llama", q) for q in ("Q2_K", "Q3_K_M", "Q5_K_M", "Q6_K", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "F16")],
)
def test_tiny_logits_match_the_dequantized_path(arch: str, qtype: str) -> None:
    path = session_factory().gguf(arch, qtype)
    ids = torch.tensor([[1, 5, 17, 42, 99, 200, 3, 383, 7, 64]])
    diff, loaded = _compare(path, ids)
    assert diff <= 1e-4
    _assert_quantized_model(loaded, path)


@pytest.mark.slow
def test_real_gemma_logits_memory_and_layout() -> None:
    path = gemma_gguf_path()
    ids = torch.tensor([[2, 818, 5279, 529, 7001, 563, 496, 236743, 100, 2000, 30000, 5, 9, 262000]])
    diff, loaded = _compare(path, ids)
    assert diff <= 1e-4
    _assert_quantized_model(loaded, path)
    model = loaded.model  # type: ignore[attr-defined]
    # the 168M-parameter embedding is held once, as its Q8_0 bytes, and doubles as the output head
    assert model.get_output_embeddings().qweight is model.get_input_embeddings().qweight
    kinds = {m.qtype.name for m in model.modules() if isinstance(m, (QuantLinear, QuantEmbedding))}
    assert {"Q8_0", "Q5_0", "Q4_K", "Q6_K"} <= kinds
    assert loaded.description.parameter_count == 268_098_176  # type: ignore[attr-defined]


def _train(model_path: Path, data: Path, weights: str, out: Path, steps: int) -> tuple[list[float], RunFinished]:
    from llamaforge_tui.core.train.config import TrainConfig
    from llamaforge_tui.core.train.trainer import run

    config = TrainConfig(
        model=str(model_path), data=str(data), weights=weights, max_steps=steps, batch_size=4, learning_rate=3e-3,
        lora_r=8, lora_alpha=16, max_seq_len=128, warmup_steps=0, scheduler="constant", dtype="float32",
        device="cpu", save_every=0, output_dir=str(out), seed=0,
    )
    events: list[object] = []
    result = run(config, events.append, threading.Event())
    assert result.status == "finished", result.reason
    losses = [e.loss for e in events if isinstance(e, StepLogged)]
    finished = [e for e in events if isinstance(e, RunFinished)]
    return losses, finished[0]


def test_trainer_learns_through_the_quantized_base_as_well_as_dequantized(tmp_path: Path) -> None:
    from tests.fixtures.train_models import write_qa_jsonl

    path = session_factory().gguf("llama", "Q4_K_M")
    data = write_qa_jsonl(tmp_path / "qa.jsonl", repeat=2)
    q_losses, q_done = _train(path, data, "gguf-quantized", tmp_path / "run-q", steps=12)
    d_losses, _ = _train(path, data, "gguf", tmp_path / "run-d", steps=12)
    assert abs(q_losses[0] - d_losses[0]) < 1e-3  # same base, same data, same first loss
    q_drop, d_drop = q_losses[0] - q_losses[-1], d_losses[0] - d_losses[-1]
    assert d_drop > 0.5
    assert abs(q_drop - d_drop) <= 0.10 * d_drop
    # the run's adapter is an ordinary peft adapter, and the run records where the weights came from
    adapter = Path(q_done.adapter_path or "")
    assert (adapter / "adapter_model.safetensors").is_file()
    assert "gguf-quantized" in (tmp_path / "run-q" / "source.json").read_text()
    # export of such a run: the llama.cpp adapter GGUF for the unchanged source file
    from llamaforge_tui.core.export.exporter import ExportOptions, export_run

    result = export_run(tmp_path / "run-q", ExportOptions(adapter=True, out_dir=tmp_path / "export"))
    assert result.type == "adapter" and result.adapter_path is not None
    with GgufFile(result.adapter_path) as gf:
        assert gf.get("general.type") == "adapter"
        assert any(t.name.endswith(".lora_a") for t in gf.tensors)
