"""GGUF summaries: the real Gemma file, tiny synthetic ones, a sparse multi-GB header, and bad files."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import gguf
import pytest
from fixtures.gguf_factory import BIG_SPECS, TinySpec, write_gguf, write_sparse_gguf
from fixtures.ollama_store import gemma_gguf  # noqa: F401
from gguf import GGMLQuantizationType as Q

from llamaforge_tui.core.errors import GgufError
from llamaforge_tui.core.gguf.info import summarize_gguf


def test_gemma_summary(gemma_gguf: Path) -> None:
    s = summarize_gguf(gemma_gguf)
    assert s.architecture == "gemma3"
    assert s.quantization == "Q4_K_M" and s.quantization_source == "general.file_type"
    assert s.tensor_types == {"F32": 109, "Q5_0": 81, "Q4_K": 27, "Q8_0": 10, "Q6_K": 9}
    assert s.tensor_count == 236
    assert 265e6 < s.parameter_count < 271e6 and s.parameter_label == "268M"
    assert (s.context_length, s.block_count, s.head_count, s.head_count_kv) == (32768, 18, 4, 1)
    assert (s.embedding_length, s.feed_forward_length, s.vocab_size) == (640, 2048, 262144)
    assert s.has_chat_template is False
    assert s.split_count == 1 and s.base_models == ()


def test_tiny_summary_counts_parameters_and_types(tmp_path: Path) -> None:
    spec = TinySpec(n_layers=2, n_embd=256, n_head=4, n_head_kv=2, n_ff=512, vocab_size=64, context_length=4096)
    path = write_gguf(tmp_path / "m", "qwen2", spec=spec, weight_type=Q.Q4_K, chat_template="{{ x }}",
                      base_models=[{"organization": "Qwen", "name": "Qwen2.5 0.5B"}])
    s = summarize_gguf(path)
    kv = 2 * 64  # n_head_kv * head_dim
    per_layer = 2 * 256 + 256 * 256 * 2 + kv * 256 * 2 + 3 * 256 * 512
    assert s.parameter_count == 2 * 64 * 256 + 2 * per_layer + 256
    assert s.tensor_types == {"Q4_K": 16, "F32": 5}
    assert s.quantization == "Q4_K_M" and s.architecture == "qwen2"
    assert (s.context_length, s.block_count, s.head_count, s.head_count_kv, s.vocab_size) == (4096, 2, 4, 2, 64)
    assert s.has_chat_template is True
    assert s.base_models[0].organization == "Qwen" and s.base_models[0].repo_url is None


def test_quantization_guessed_from_tensors_without_file_type(tmp_path: Path) -> None:
    s = summarize_gguf(write_gguf(tmp_path / "m", weight_type=Q.Q8_0, file_type=-1))
    assert s.file_type is None and s.quantization == "Q8_0" and s.quantization_source == "tensors"


def test_sparse_multi_gb_header_is_fast(tmp_path: Path) -> None:
    path = write_sparse_gguf(tmp_path / "llama8b", BIG_SPECS["llama3.1-8b"])
    assert path.stat().st_size > 4e9
    assert path.stat().st_blocks * 512 < 50e6  # sparse: only the header is on disk
    start = time.perf_counter()
    s = summarize_gguf(path)
    elapsed = time.perf_counter() - start
    assert s.vocab_size == 128256 and s.architecture == "llama" and s.quantization == "Q4_K_M"
    assert 7.9e9 < s.parameter_count < 8.1e9 and s.parameter_label == "8.0B"
    assert elapsed < 1.0, f"header summary took {elapsed:.2f}s"


def _header(version: int = 3, n_tensors: int = 0, n_kv: int = 0) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)


@pytest.mark.parametrize("data, message", [
    (b"", "too small"),
    (b"PK\x03\x04" + b"\0" * 40, "not a GGUF file"),
    (_header(version=99) + b"\0" * 8, "unsupported GGUF version 99"),
    (_header(n_tensors=2**40, n_kv=1), "absurd header counts"),
    (_header(n_kv=1) + struct.pack("<Q", 2**60) + b"k", "truncated or corrupt"),
    # a string array claiming 2**40 items: refused before anything is allocated
    (_header(n_kv=1) + struct.pack("<Q", 1) + b"a" + struct.pack("<IIQ", 9, 8, 2**40), "truncated or corrupt"),
])
def test_bad_files_give_clear_errors(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "bad"
    path.write_bytes(data)
    with pytest.raises(GgufError, match=message):
        summarize_gguf(path)


def test_truncated_tensor_data(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m", weight_type=Q.F16)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(GgufError, match="truncated"):
        summarize_gguf(path)


def test_summary_matches_gguf_reader(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m", "gemma2", weight_type=Q.Q8_0)
    ref = gguf.GGUFReader(str(path))
    s = summarize_gguf(path)
    assert s.tensor_count == len(ref.tensors)
    assert s.parameter_count == sum(int(t.n_elements) for t in ref.tensors)
    assert s.architecture == "gemma2"


def test_summary_cache_reuses_unchanged_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llamaforge_tui.core.gguf import info as gguf_info

    spec = TinySpec(n_layers=1, n_embd=64, n_head=2, n_head_kv=1, n_ff=128, vocab_size=16)
    path = write_gguf(tmp_path / "blob", spec=spec, weight_type=Q.F16, chat_template="t",
                      base_models=[{"repo_url": "https://huggingface.co/a/b"}])
    reads: list[Path] = []
    real = gguf_info.summarize_gguf
    monkeypatch.setattr(gguf_info, "summarize_gguf", lambda p: reads.append(p) or real(p))
    cache_file = tmp_path / "cache" / "s.json"

    cache = gguf_info.SummaryCache(cache_file)
    first = cache.summarize(path)
    assert not cache_file.exists()  # written by save() only
    cache.save()
    assert len(reads) == 1
    assert gguf_info.SummaryCache(cache_file).summarize(path) == first  # from the cache
    assert len(reads) == 1

    write_gguf(path, spec=spec, weight_type=Q.Q8_0)  # the file changes: read again
    assert gguf_info.SummaryCache(cache_file).summarize(path).quantization == "Q8_0"
    assert len(reads) == 2

    cache_file.write_text("{not json")  # a broken cache is ignored, not fatal
    assert gguf_info.SummaryCache(cache_file).summarize(path).quantization == "Q8_0"
    assert len(reads) == 3


def test_second_scan_reads_no_headers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fixtures.ollama_store import build_fixture_store

    from llamaforge_tui.core.gguf import info as gguf_info
    from llamaforge_tui.core.model.basemodel import scan_models as scan_store
    from llamaforge_tui.core.settings import Settings

    info = build_fixture_store(tmp_path / "root", tmp_path / "work")
    settings = Settings(models_dirs=[str(info.root)])
    scan = scan_store(settings)
    first = {m.full_name: m.summary for m in scan.models}
    broken = next(m for m in scan.models if m.full_name == "truncated:latest")
    reads: list[Path] = []
    real = gguf_info.summarize_gguf
    monkeypatch.setattr(gguf_info, "summarize_gguf", lambda p: reads.append(p) or real(p))
    second = {m.full_name: m.summary for m in scan_store(settings).models}
    assert second == first
    assert reads == [broken.layers["model"]]  # only the unreadable GGUF is read again
