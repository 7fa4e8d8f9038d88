"""The streaming GGUF writer: exact copies, typed metadata, atomicity, disk-space and cancellation."""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType

from llamaforge_tui.core.gguf import writer as gguf_writer
from llamaforge_tui.core.gguf.file import GgufFile
from llamaforge_tui.core.gguf.writer import (
    ExportCancelled,
    ExportError,
    KVEntry,
    TensorPlan,
    decode_tensor,
    encode_tensor,
    kv,
    kv_from_gguf,
    output_type_for,
    write_gguf,
)


def _small(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 64)).astype(np.float32)
    meta = {
        "general.architecture": kv("llama"),
        "llama.block_count": kv(1),
        "llama.rope.freq_base": KVEntry(GGUFValueType.FLOAT32, 10000.0),
        "tokenizer.ggml.tokens": KVEntry(GGUFValueType.ARRAY, [f"t{i}" for i in range(100)], GGUFValueType.STRING),
        "tokenizer.ggml.scores": KVEntry(GGUFValueType.ARRAY, [float(-i) for i in range(100)], GGUFValueType.FLOAT32),
        "small.list": kv([1, 2, 3]),
        "flag": kv(True),
    }
    plans = [
        TensorPlan("blk.0.attn_q.weight", (64, 8), Q.Q8_0, lambda: encode_tensor(w, Q.Q8_0)),
        TensorPlan("blk.0.attn_norm.weight", (64,), Q.F32, lambda: np.ones(64, np.float32)),
        TensorPlan("token_embd.weight", (64, 8), Q.F16, lambda: w.astype(np.float16)),
    ]
    path = tmp_path / "small.gguf"
    size = write_gguf(path, meta, plans)
    assert size == path.stat().st_size
    return path


def test_written_file_reads_back_with_types_and_values(tmp_path: Path) -> None:
    g = GgufFile(_small(tmp_path))
    assert g.architecture == "llama" and g.get("llama.block_count") == 1 and g.get("flag") is True
    assert g.kv_types["llama.rope.freq_base"][0] == GGUFValueType.FLOAT32
    assert g.get("tokenizer.ggml.tokens")[99] == "t99" and g.get("small.list") == [1, 2, 3]
    assert [t.name for t in g.tensors] == ["blk.0.attn_q.weight", "blk.0.attn_norm.weight", "token_embd.weight"]
    assert g.tensor("blk.0.attn_q.weight").ggml_type == Q.Q8_0
    np.testing.assert_array_equal(decode_tensor(g, "blk.0.attn_norm.weight"), np.ones(64, np.float32))
    q = decode_tensor(g, "blk.0.attn_q.weight")
    f = decode_tensor(g, "token_embd.weight")
    assert q.shape == (8, 64) and np.abs(q - f).max() < 0.05


def test_copy_with_raw_metadata_is_byte_identical(tmp_path: Path) -> None:
    src = GgufFile(_small(tmp_path))
    plans = [TensorPlan(i.name, i.ne, i.ggml_type, lambda i=i: src.tensor_bytes(i)) for i in src.tensors]
    out = tmp_path / "copy.gguf"
    write_gguf(out, kv_from_gguf(src), plans)
    assert out.read_bytes() == src.path.read_bytes()


def test_type_policy_keeps_norms_f32_and_falls_back_to_f16() -> None:
    assert output_type_for("blk.0.attn_norm.weight", (64,), Q.Q8_0) == Q.F32
    assert output_type_for("output_norm.weight", (64, 1), Q.Q8_0) == Q.F32
    assert output_type_for("blk.0.attn_q.bias", (64,), Q.F16) == Q.F32
    assert output_type_for("blk.0.ffn_up.weight", (48, 16), Q.Q8_0) == Q.F16  # 48 is not a multiple of 32
    assert output_type_for("blk.0.ffn_up.weight", (64, 16), Q.Q4_0) == Q.Q4_0


def test_not_enough_disk_space_is_refused_before_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(gguf_writer.shutil, "disk_usage", lambda p: usage(10**9, 0, 1000))
    with pytest.raises(ExportError, match="not enough free disk space"):
        write_gguf(tmp_path / "x.gguf", {"general.architecture": kv("llama")},
                   [TensorPlan("a.weight", (32,), Q.F32, lambda: np.zeros(32, np.float32))])
    assert list(tmp_path.iterdir()) == []


def test_stop_event_and_errors_leave_nothing(tmp_path: Path) -> None:
    stop = threading.Event()
    calls = []

    def produce() -> np.ndarray:
        calls.append(1)
        stop.set()
        return np.zeros(32, np.float32)

    plans = [TensorPlan(f"t{i}.weight", (32,), Q.F32, produce) for i in range(3)]
    with pytest.raises(ExportCancelled):
        write_gguf(tmp_path / "x.gguf", {}, plans, stop_event=stop)
    assert len(calls) == 1
    with pytest.raises(ExportError, match="produced 64 bytes, expected 128"):
        write_gguf(tmp_path / "x.gguf", {}, [TensorPlan("a.weight", (32,), Q.F32, lambda: np.zeros(16, np.float32))])
    assert list(tmp_path.iterdir()) == []


def test_killed_mid_write_leaves_no_file_at_target(tmp_path: Path) -> None:
    """A real kill -9 in the middle of the tensor data: the target path never appears."""
    target = tmp_path / "model.gguf"
    marker = tmp_path / "writing"
    script = textwrap.dedent(f"""
        import time, numpy as np
        from pathlib import Path
        from gguf import GGMLQuantizationType as Q
        from llamaforge_tui.core.gguf.writer import TensorPlan, write_gguf
        def slow(i):
            if i == 3:
                Path({str(marker)!r}).write_text("x")
                time.sleep(60)
            return np.zeros(1 << 16, np.float32)
        write_gguf({str(target)!r}, {{}}, [TensorPlan(f"t{{i}}.weight", (1 << 16,), Q.F32, lambda i=i: slow(i)) for i in range(8)])
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[3])
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, "writer exited early"
            assert time.monotonic() < deadline, "writer never reached the middle of the data"
            time.sleep(0.05)
        partials = list(tmp_path.glob(".model.gguf.*.partial"))
        assert partials and partials[0].stat().st_size > 0
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not target.exists()
