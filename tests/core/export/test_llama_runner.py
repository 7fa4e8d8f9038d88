"""The llama.cpp runner: a child process per model, extra buffer types off unless asked for, streamed generation,
and a native crash that fails one call with one clear message instead of killing the caller."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from fixtures.tiny_models import session_factory

from llamaforge_tui.core.export import llama_runner
from llamaforge_tui.core.export.llama_child import CRASH_ENV
from llamaforge_tui.core.export.llama_runner import (
    LlamaCppCrashed,
    LlamaSession,
    llama_logits,
)
from llamaforge_tui.core.gguf.writer import ExportCancelled, ExportError
from llamaforge_tui.core.settings import Settings

pytestmark = pytest.mark.slow


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_extra_buffers_are_off_by_default_and_the_setting_turns_them_on() -> None:
    """llama.cpp repacks Q4_0 weights into its CPU_REPACK buffer (the AMX/repack path) only when asked to."""
    path = session_factory().gguf("llama", "Q4_0")
    assert Settings().llama_cpp_extra_buffers is False
    with LlamaSession(path, n_ctx=64) as plain:
        assert plain.info.buffer_types == ("CPU_Mapped",) and not plain.info.extra_buffers
        ids = [1, 5, 9, 13, 17]
        off = plain.logits([ids])[0]
    on_setting = llama_runner.extra_buffers_setting(Settings(llama_cpp_extra_buffers=True))
    with LlamaSession(path, n_ctx=64, extra_buffers=on_setting) as repacked:
        assert "CPU_REPACK" in repacked.info.buffer_types and repacked.info.extra_buffers
        on = repacked.logits([ids])[0]
    assert (off.argmax(-1) == on.argmax(-1)).all()  # the same model either way, on this CPU


def test_logits_greedy_tokenize_and_streamed_generation() -> None:
    path = session_factory().gguf("llama", "F32")
    with LlamaSession(path, n_ctx=96) as session:
        ids = session.tokenize("The quick brown fox")
        assert ids and session.detokenize(ids).strip() == "The quick brown fox"
        a, b = session.logits([ids, ids[:2]])
        assert a.shape == (len(ids), session.info.n_vocab) and b.shape == (2, session.info.n_vocab)
        assert np.allclose(a[:2], b, atol=1e-4)  # each sequence starts from an empty context
        greedy = session.greedy(ids, 8, set())
        assert len(greedy) == 8 and greedy[0] == int(a[-1].argmax())
        pieces: list[str] = []
        out = session.generate(ids, max_tokens=12, temperature=0.9, top_p=0.9, seed=7, on_token=pieces.append)
        again = session.generate(ids, max_tokens=12, temperature=0.9, top_p=0.9, seed=7)
        assert "".join(pieces) == out.text and out.ids == again.ids and out.prompt_tokens == len(ids)
        assert out.finish_reason in ("length", "stop") and out.tokens_per_second > 0
        greedy_out = session.generate(ids, max_tokens=8, temperature=0.0)
        assert greedy_out.ids == greedy
        text = greedy_out.text
        if len(text.strip()) > 2:  # a stop string ends the answer before it, and is never streamed
            stop = text.strip()[1:3]
            streamed: list[str] = []
            cut = session.generate(ids, max_tokens=8, temperature=0.0, stop=[stop], on_token=streamed.append)
            assert cut.finish_reason == "stop" and stop not in cut.text and "".join(streamed) == cut.text


def test_stop_event_cancels_a_generation_and_a_long_call() -> None:
    path = session_factory().gguf("llama", "F32")
    stop = threading.Event()
    with LlamaSession(path, n_ctx=512) as session:
        seen: list[str] = []

        def on_token(text: str) -> None:
            seen.append(text)
            if len(seen) == 3:
                stop.set()

        out = session.generate([1, 5, 9], max_tokens=400, temperature=0.0, on_token=on_token, stop_event=stop)
        assert out.finish_reason == "cancelled" and len(out.ids) < 400
        assert session.greedy([1, 5, 9], 2, set())  # the session is still usable after a cancelled generation
    stop.set()
    with pytest.raises(ExportCancelled):
        llama_logits(path, [[1, 2, 3]], stop_event=stop)


def test_a_native_crash_fails_the_call_with_one_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    path = session_factory().gguf("llama", "Q8_0")
    before = _sha(path)
    monkeypatch.setenv(CRASH_ENV, "logits")
    with pytest.raises(LlamaCppCrashed) as info:
        llama_logits(path, [[1, 2, 3, 4]], what="verification of tiny-llama-q8_0.gguf")
    message = str(info.value)
    assert info.value.signal_name == "SIGSEGV" and "\n" not in message
    assert "crashed with SIGSEGV during verification of tiny-llama-q8_0.gguf" in message
    assert f"{path} on disk is complete and untouched" in message
    assert llama_runner.REBUILD_HINT in message and "llama_cpp_extra_buffers" not in message
    assert _sha(path) == before
    monkeypatch.setenv(CRASH_ENV, "open")
    with pytest.raises(LlamaCppCrashed, match="llama_cpp_extra_buffers = false"):
        LlamaSession(path, extra_buffers=True)  # with the extra buffers on, turning them off is the first thing to try
    monkeypatch.delenv(CRASH_ENV)
    assert np.isfinite(llama_logits(path, [[1, 2, 3, 4]])[0]).all()  # the next call gets a healthy child


def test_errors_inside_the_child_are_messages_not_crashes(tmp_path: Path) -> None:
    bad = tmp_path / "not-a-model.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(64))
    with pytest.raises(ExportError, match="llama.cpp could not load") as info:
        LlamaSession(bad)
    assert not isinstance(info.value, LlamaCppCrashed)
    path = session_factory().gguf("llama", "F32")
    with LlamaSession(path, n_ctx=64) as session:
        with pytest.raises(ExportError, match="longer than the context"):
            session.logits([list(range(1, 80))])
        with pytest.raises(ExportError, match="outside the vocabulary"):
            session.logits([[1, 10**6]])
        assert session.logits([[1, 2]])[0].shape[0] == 2  # the child survived both


def test_k_quantization_runs_in_the_child_with_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llamaforge_tui.core.export.kquant import quantize_file

    src = session_factory().gguf("llama", "F16")
    before = _sha(src)
    steps: list[tuple[int, int]] = []
    size = quantize_file(src, tmp_path / "q6.gguf", "q6_k", on_progress=lambda d, t: steps.append((d, t)))
    assert size == (tmp_path / "q6.gguf").stat().st_size > 0
    assert steps and steps[-1][0] == steps[-1][1]
    monkeypatch.setenv(CRASH_ENV, "quantize")
    with pytest.raises(LlamaCppCrashed, match="SIGSEGV during Q4_K_M quantization") as info:
        quantize_file(src, tmp_path / "q4.gguf", "q4_k_m")
    assert f"Nothing was written to {tmp_path / 'q4.gguf'}" in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q6.gguf"] and _sha(src) == before
