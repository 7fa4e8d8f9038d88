"""Property tests: the GGUF header reader and summary open any bytes or refuse them with ``GgufError``,
quickly and without a runaway allocation (mutated real headers, truncation at every offset, huge counts and
lengths, wrong type tags, tensors past the end, nested arrays, corrupt summary caches)."""

from __future__ import annotations

import json
import os
import struct
import time
from pathlib import Path

import pytest
from fixtures.fuzz_inputs import (
    T_ARR,
    T_STR,
    T_U8,
    T_U32,
    array_payload,
    gguf_bytes,
    gguf_input,
    gstr,
    kv,
    mutate_bytes,
    nested_array,
    random_json_value,
    small_valid_gguf,
    tensor_info,
)
from fixtures.gguf_factory import TinySpec, write_gguf
from fixtures.ollama_store import gemma_gguf  # noqa: F401  (the shared session fixture)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llamaforge_tui.core.errors import GgufError
from llamaforge_tui.core.gguf.file import GgufFile
from llamaforge_tui.core.gguf.info import (
    GgufSummary,
    SummaryCache,
    summarize,
    summarize_gguf,
)
from llamaforge_tui.core.gguf.values import MAX_ARRAY_DEPTH

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])
SECONDS = 2.0  # per input, the fuzz script's limit


def open_or_refuse(path: Path) -> GgufSummary | None:
    """The whole promise for one file: a sound summary that survives the cache round trip, or GgufError."""
    start = time.monotonic()
    try:
        with GgufFile(path) as gf:
            summary = summarize(gf)
            for key in list(gf.kv):
                gf.get(key)
            for info in gf.tensors[:4]:
                gf.tensor_array(info)
    except GgufError as exc:
        assert str(exc)
        summary = None
    else:
        assert GgufSummary.from_dict(json.loads(json.dumps(summary.to_dict()))) == summary
    assert time.monotonic() - start < SECONDS
    return summary


@pytest.fixture(scope="module")
def real_header(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A GGUF written by gguf-py's own writer (a real header, vocabulary and tensors)."""
    spec = TinySpec(n_layers=1, n_embd=64, n_head=2, n_head_kv=1, n_ff=128, vocab_size=80, context_length=256)
    path = write_gguf(tmp_path_factory.mktemp("seed") / "tiny.gguf", spec=spec,
                      base_models=[{"name": "m", "repo_url": "http://["}])
    return path.read_bytes()


@FAST
@given(rng=st.randoms(use_true_random=False))
def test_mutated_real_headers_open_or_refuse(tmp_path: Path, real_header: bytes, rng) -> None:
    path = tmp_path / "mutated.gguf"
    path.write_bytes(mutate_bytes(rng, real_header, protect=4))
    open_or_refuse(path)


@FAST
@given(rng=st.randoms(use_true_random=False))
def test_synthetic_worst_cases_open_or_refuse(tmp_path: Path, rng) -> None:
    path = tmp_path / "synthetic.gguf"
    path.write_bytes(gguf_input(rng))
    open_or_refuse(path)


def test_truncation_at_every_offset_is_refused(tmp_path: Path) -> None:
    data = small_valid_gguf()
    path = tmp_path / "cut.gguf"
    path.write_bytes(data)
    opened = []
    with open(path, "r+b") as fh:
        for cut in range(len(data) - 1, -1, -1):  # every section: magic, counts, each KV, tensor infos, data
            fh.truncate(cut)  # shrinking in place: far cheaper than writing 2,000 files
            try:
                GgufFile(path).close()
                opened.append(cut)
            except GgufError:
                pass
    assert opened == []
    path.write_bytes(data)
    assert open_or_refuse(path) is not None


@FAST
@given(n_kv=st.integers(2, 2**64 - 1), n_tensors=st.integers(0, 2**64 - 1))
def test_huge_header_counts_are_refused(tmp_path: Path, n_kv: int, n_tensors: int) -> None:
    path = tmp_path / "counts.gguf"
    path.write_bytes(gguf_bytes([kv("a", T_U8, b"\1")], n_kv=n_kv, n_tensors=n_tensors, alignment=1))
    with pytest.raises(GgufError):
        open_or_refuse_strict(path)


def open_or_refuse_strict(path: Path) -> None:
    start = time.monotonic()
    try:
        GgufFile(path).close()
    finally:
        assert time.monotonic() - start < SECONDS


@FAST
@given(length=st.integers(64, 2**64 - 1), item=st.sampled_from([T_U8, T_U32, T_STR, T_ARR]), where=st.booleans())
def test_huge_lengths_are_refused_before_allocating(tmp_path: Path, length: int, item: int, where: bool) -> None:
    if where:  # an array count far beyond the bytes that remain
        entry = kv("arr", T_ARR, array_payload(item, length, b"\0" * 32))
    else:  # a string length far beyond the file
        entry = struct.pack("<Q", length) + b"key" + struct.pack("<I", T_U8) + b"\1"
    path = tmp_path / "long.gguf"
    path.write_bytes(gguf_bytes([entry]))
    with pytest.raises(GgufError):
        open_or_refuse_strict(path)


@FAST
@given(tag=st.integers(0, 2**32 - 1), payload=st.binary(max_size=32))
def test_wrong_value_type_tags(tmp_path: Path, tag: int, payload: bytes) -> None:
    path = tmp_path / "tag.gguf"
    path.write_bytes(gguf_bytes([gstr("k") + struct.pack("<I", tag) + payload]))
    summary = open_or_refuse(path)
    if tag > 12:
        assert summary is None


@FAST
@given(offset=st.integers(0, 2**64 - 1), ne0=st.sampled_from([32, 64, 2**32, 2**62]))
def test_tensor_offsets_past_the_end_are_refused(tmp_path: Path, offset: int, ne0: int) -> None:
    path = tmp_path / "offset.gguf"
    data = gguf_bytes([], [tensor_info("t", (ne0,), 0, offset)], data=b"\0" * 128)
    path.write_bytes(data)
    fits = offset + ne0 * 4 <= 128
    if fits:
        assert open_or_refuse(path) is not None
    else:
        with pytest.raises(GgufError, match="truncated"):
            open_or_refuse_strict(path)


@FAST
@given(depth=st.integers(1, 3000), count=st.integers(0, 3))
def test_nested_arrays_decode_once_or_are_refused(tmp_path: Path, depth: int, count: int) -> None:
    depth = min(depth, 12) if count > 1 else depth  # 3^12 leaves is plenty
    path = tmp_path / "nested.gguf"
    path.write_bytes(gguf_bytes([kv("nested", T_ARR, nested_array(depth, count))]))
    start = time.monotonic()
    if count and depth > MAX_ARRAY_DEPTH:
        with pytest.raises(GgufError, match="nested"):
            GgufFile(path)
    else:
        with GgufFile(path) as gf:
            value = gf.get("nested")
        for _ in range(depth - 1):  # every level is a real list of `count` items
            assert isinstance(value, list) and len(value) == count
            if not count:
                break
            value = value[0]
    assert time.monotonic() - start < 1.0


def test_nested_arrays_cost_linear_time_not_two_to_the_depth(tmp_path: Path) -> None:
    """The finding: each level was walked and then decoded again, so depth 40 never finished."""
    path = tmp_path / "deep.gguf"
    path.write_bytes(gguf_bytes([kv("nested", T_ARR, nested_array(MAX_ARRAY_DEPTH - 1))]))
    start = time.monotonic()
    expected: list = []
    for _ in range(MAX_ARRAY_DEPTH - 2):
        expected = [expected]
    with GgufFile(path) as gf:
        assert gf.get("nested") == expected
    path.write_bytes(gguf_bytes([kv("nested", T_ARR, nested_array(40))]))
    with pytest.raises(GgufError, match=f"more than {MAX_ARRAY_DEPTH} deep"):
        GgufFile(path)
    assert time.monotonic() - start < 0.5


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "blob"
    os.mkfifo(fifo)
    with pytest.raises(GgufError, match="not a regular file"):
        GgufFile(fifo)
    with pytest.raises(GgufError, match="directory"):
        GgufFile(tmp_path)


def test_a_failing_mmap_is_a_gguf_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mmap

    path = tmp_path / "ok.gguf"
    path.write_bytes(small_valid_gguf())

    def no_memory(*args, **kwargs):
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(mmap, "mmap", no_memory)
    with pytest.raises(GgufError, match="cannot map the file"):
        GgufFile(path)


@FAST
@given(rng=st.randoms(use_true_random=False), shape=st.sampled_from(["list", "field", "missing", "junk"]))
def test_a_corrupt_summary_cache_entry_is_discarded(tmp_path: Path, rng, shape: str) -> None:
    """The finding: a cached summary holding a list where a dict was expected crashed the scan."""
    gguf = tmp_path / "m.gguf"
    if not gguf.exists():
        gguf.write_bytes(small_valid_gguf())
    good = summarize_gguf(gguf)
    st_ = os.stat(gguf)
    summary = good.to_dict()
    if shape == "list":
        summary = [summary]
    elif shape == "field":
        summary[rng.choice(sorted(summary))] = random_json_value(rng)
    elif shape == "missing":
        summary.pop(rng.choice(sorted(summary)))
    else:
        summary = random_json_value(rng)
    cache_file = tmp_path / "cache.json"
    cache_file.write_text(json.dumps({"format": 1, "entries": {str(gguf): {
        "stamp": [st_.st_size, st_.st_mtime_ns], "summary": summary}}}))
    cache = SummaryCache(cache_file)
    got = cache.summarize(gguf)
    if got != good:  # only an entry whose every field has the right type may be used as it is
        assert shape in ("field", "missing") and got == GgufSummary.from_dict(summary)
    cache.save()
    assert SummaryCache(cache_file).summarize(gguf) == got


def test_a_deeply_nested_summary_cache_is_ignored(tmp_path: Path) -> None:
    cache_file = tmp_path / "cache.json"
    cache_file.write_text("[" * 100_000 + "]" * 100_000)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(small_valid_gguf())
    assert SummaryCache(cache_file).summarize(gguf).architecture == "llama"


@pytest.mark.slow
def test_mutated_gemma_headers_open_or_refuse(tmp_path: Path, gemma_gguf: Path) -> None:
    """The real Gemma 3 header (262k-token vocabulary), mutated; tensor data stays a sparse hole."""
    import random

    with GgufFile(gemma_gguf) as gf:
        header_end, size = gf.data_offset, gf.file_size
    header = gemma_gguf.read_bytes()[:header_end]
    for seed in range(25):
        rng = random.Random(seed)
        path = tmp_path / f"g{seed}.gguf"
        data = mutate_bytes(rng, header, protect=4)
        with open(path, "wb") as fh:
            fh.write(data)
            fh.truncate(size)
        open_or_refuse(path)
        path.unlink()

