"""Memory estimates before loading/training, and the refusal (with numbers and advice) when it will not fit."""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures.tiny_models import session_factory
from llamaforge_tui.core.gguf import arch
from llamaforge_tui.core.gguf.file import GgufFile
from llamaforge_tui.core.model.loading import load_model
from llamaforge_tui.core.model.memory import (
    OutOfMemoryRisk,
    check_model_fits,
    estimate_memory,
    fmt_bytes,
    free_memory,
    lora_parameters,
    peak_rss_bytes,
)
from llamaforge_tui.core.settings import Settings

GIB = 1024**3
# Llama 3.1 8B's shape
LLAMA8B = {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256, "tie_word_embeddings": False}


def test_weights_follow_the_parameter_count_and_dtype() -> None:
    est = estimate_memory(LLAMA8B, dtype="bfloat16", training=False, free=100 * GIB)
    assert 7.9e9 < est.weights / 2 < 8.1e9  # ~8.03 B parameters x 2 bytes
    assert est.lora == est.optimizer == est.activations == 0 and est.fits is True
    f32 = estimate_memory(LLAMA8B, dtype="float32", training=False, free=100 * GIB)
    assert f32.weights == 2 * est.weights


def test_lora_and_optimizer_scale_with_rank() -> None:
    # rank 8 on all seven projections of Llama 3.1 8B: the well-known ~21 M parameters
    assert lora_parameters(LLAMA8B, 8) == 20_971_520
    est8 = estimate_memory(LLAMA8B, lora_rank=8, free=100 * GIB)
    est16 = estimate_memory(LLAMA8B, lora_rank=16, free=100 * GIB)
    assert est8.lora == 20_971_520 * 4 and est8.optimizer == 3 * est8.lora
    assert est16.lora == 2 * est8.lora


def test_activations_grow_with_batch_and_sequence() -> None:
    small = estimate_memory(LLAMA8B, batch_size=1, seq_len=512, free=100 * GIB)
    wide = estimate_memory(LLAMA8B, batch_size=4, seq_len=512, free=100 * GIB)
    long = estimate_memory(LLAMA8B, batch_size=1, seq_len=2048, free=100 * GIB)
    assert wide.activations > 3.9 * small.activations
    assert long.activations == 4 * small.activations  # fused attention keeps nothing quadratic (measured)
    ckpt = estimate_memory(LLAMA8B, batch_size=4, seq_len=512, gradient_checkpointing=True, free=100 * GIB)
    assert ckpt.activations < wide.activations / 3


def test_too_big_says_so_with_numbers_and_advice() -> None:
    est = estimate_memory(LLAMA8B, dtype="float32", batch_size=8, seq_len=4096, free=24 * GIB, device="cuda:0")
    assert est.fits is False
    text = " / ".join(est.advice)
    assert "--batch-size" in text and "--max-seq-len" in text and "gradient checkpointing" in text
    assert "gguf-quantized" in text and "bf16" in text
    assert "needs ~" in est.summary() and "free: 24.0 GiB" in est.summary()
    assert est.to_dict()["fits"] is False


def test_no_free_memory_does_not_fit() -> None:
    est = estimate_memory({**LLAMA8B}, training=False, free=0)
    assert est.fits is False and est.free == 0


def test_check_model_fits_refuses_before_loading() -> None:
    with pytest.raises(OutOfMemoryRisk, match=r"loading needs ~.* on cpu but only 1\.0 GiB is free"):
        check_model_fits(16 * GIB, "cpu", free=1 * GIB)
    check_model_fits(1 * GIB, "cpu", free=16 * GIB)  # fits: no error


def test_gguf_estimate_matches_the_loaded_model() -> None:
    path = session_factory().gguf("qwen2", "Q8_0")
    with GgufFile(path) as g:
        config = arch.config_from_gguf(g)
    loaded = load_model(str(path), Settings(), dtype="float32", device="cpu")
    est = estimate_memory(config, dtype="float32", training=False, free=100 * GIB)
    real = sum(p.numel() * p.element_size() for p in {id(p): p for p in loaded.model.parameters()}.values())
    assert abs(est.weights - real) / real < 0.02


def test_helpers() -> None:
    assert fmt_bytes(1536) == "1.5 KiB" and fmt_bytes(None) == "?" and fmt_bytes(3 * GIB) == "3.0 GiB"
    free = free_memory("cpu")
    assert free is None or free > 0
    peak = peak_rss_bytes()
    assert peak is not None and peak > 10 * 2**20


def test_load_model_refuses_when_memory_is_short(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import llamaforge_tui.core.model.memory as memory

    monkeypatch.setattr(memory, "free_memory", lambda device="cpu": 1024)
    with pytest.raises(OutOfMemoryRisk, match="only 1.0 KiB is free"):
        load_model(str(session_factory().gguf("llama", "Q8_0")), Settings(), dtype="float32", device="cpu")


def test_hf_weights_are_estimated_from_safetensors_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    import llamaforge_tui.core.model.memory as memory
    from llamaforge_tui.core.model.loading import hf_weights_bytes

    hf_dir = session_factory().hf_dir("llama")
    loaded = load_model(str(hf_dir), Settings(), dtype="bfloat16", device="cpu")
    real = sum(p.numel() * p.element_size() for p in {id(p): p for p in loaded.model.parameters()}.values())
    import torch

    assert hf_weights_bytes(hf_dir, torch.bfloat16) == real
    assert hf_weights_bytes(hf_dir, torch.float32) == 2 * real
    monkeypatch.setattr(memory, "free_memory", lambda device="cpu": 4096)
    with pytest.raises(OutOfMemoryRisk, match="only 4.0 KiB is free"):
        load_model(str(hf_dir), Settings(), dtype="float32", device="cpu")
