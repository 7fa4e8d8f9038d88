"""The lazy GGUF reader: same answers as gguf.GGUFReader, and clear errors on bad files."""

from __future__ import annotations

import struct
from pathlib import Path

import gguf
import numpy as np
import pytest

from llamaforge_tui.core.errors import GgufError
from llamaforge_tui.core.gguf.file import GgufFile, file_type_name
from llamaforge_tui.core.gguf.values import LazyArray


def _write(path: Path, n_tokens: int = 300) -> Path:
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(2)
    w.add_context_length(128)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    w.add_token_list([f"tok{i}" for i in range(n_tokens)])
    w.add_token_scores([float(i) for i in range(n_tokens)])
    w.add_array("test.small", [1, 2, 3])
    w.add_string("tokenizer.chat_template", "{{ messages }} [not markup]")
    rng = np.random.default_rng(0)
    w.add_tensor("a.weight", rng.standard_normal((4, 64), dtype=np.float32))
    q = gguf.quants.quantize(rng.standard_normal((8, 64), dtype=np.float32), gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("b.weight", q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_matches_gguf_reader(tmp_path: Path) -> None:
    path = _write(tmp_path / "blob-without-extension")
    ref = gguf.GGUFReader(str(path))
    with GgufFile(path) as g:
        assert g.architecture == "llama"
        assert g.arch_get("context_length") == 128
        assert file_type_name(g.get("general.file_type")) == "Q8_0"
        assert isinstance(g.kv["tokenizer.ggml.tokens"], LazyArray)
        assert g.array_len("tokenizer.ggml.tokens") == 300
        assert g.get("tokenizer.ggml.tokens")[299] == "tok299"
        assert g.get("tokenizer.ggml.scores")[5] == 5.0
        assert g.get("test.small") == [1, 2, 3]
        assert g.kv_types["test.small"] == (gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.INT32)
        assert g.get("tokenizer.chat_template") == "{{ messages }} [not markup]"
        assert [t.name for t in g.tensors] == [t.name for t in ref.tensors]
        for t in ref.tensors:
            mine = g.tensor(t.name)
            assert mine.ggml_type == t.tensor_type
            assert list(mine.ne) == [int(x) for x in t.shape]
            assert np.array_equal(g.tensor_bytes(mine), np.asarray(t.data).view(np.uint8).reshape(-1))
        a = g.tensor_array(g.tensor("a.weight"))
        assert a.shape == (4, 64) and a.dtype == np.float32


def test_wrong_magic(tmp_path: Path) -> None:
    p = tmp_path / "x"
    p.write_bytes(b"NOPE" + b"\0" * 100)
    with pytest.raises(GgufError, match="not a GGUF file"):
        GgufFile(p)


def test_unsupported_version(tmp_path: Path) -> None:
    p = tmp_path / "x"
    p.write_bytes(b"GGUF" + struct.pack("<IQQ", 99, 0, 0))
    with pytest.raises(GgufError, match="unsupported GGUF version 99"):
        GgufFile(p)


def test_absurd_counts_do_not_allocate(tmp_path: Path) -> None:
    p = tmp_path / "x"
    p.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 2**60, 1))
    with pytest.raises(GgufError, match="absurd"):
        GgufFile(p)


def test_absurd_string_length(tmp_path: Path) -> None:
    p = tmp_path / "x"
    p.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 2**62) + b"key")
    with pytest.raises(GgufError, match="truncated or corrupt"):
        GgufFile(p)


def test_absurd_array_count(tmp_path: Path) -> None:
    key = b"k"
    body = struct.pack("<Q", len(key)) + key + struct.pack("<IIQ", 9, 8, 2**40)
    p = tmp_path / "x"
    p.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + body)
    with pytest.raises(GgufError, match="truncated or corrupt"):
        GgufFile(p)


@pytest.mark.parametrize("cut", [30, 200, -10])
def test_truncated_file(tmp_path: Path, cut: int) -> None:
    src = _write(tmp_path / "ok").read_bytes()
    p = tmp_path / "cut"
    p.write_bytes(src[:cut])
    with pytest.raises(GgufError, match="truncated"):
        GgufFile(p)


def test_missing_and_directory(tmp_path: Path) -> None:
    with pytest.raises(GgufError, match="not found"):
        GgufFile(tmp_path / "nope")
    with pytest.raises(GgufError, match="directory"):
        GgufFile(tmp_path)
