"""A streaming, atomic GGUF writer.

Why not ``gguf.GGUFWriter``: its ``add_tensor`` keeps every array in RAM until the end, and copying a
262k-token vocabulary through it means building Python objects for every string. Here metadata values
that come from a source GGUF travel as their raw encoded bytes (``KVEntry.raw``), and tensor data is
produced one tensor at a time by a callback, written, and dropped, so peak memory stays near one tensor.

The file goes to a temporary name beside the target and is renamed only when complete
(``fsutil.atomic_open``): an interrupted export (Ctrl-C, crash, kill -9) never leaves a file at the
final path. Free disk space is checked before the first byte is written.
"""

from __future__ import annotations

import shutil
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType
from gguf import quants as gguf_quants

from llamaforge_tui.core.errors import LlamaForgeError
from llamaforge_tui.core.fsutil import atomic_open, human_bytes
from llamaforge_tui.core.gguf.file import GgufFile
from llamaforge_tui.core.gguf.values import LazyArray

GGUF_VERSION = 3
DEFAULT_ALIGNMENT = 32
DISK_MARGIN_BYTES = 64 * 1024 * 1024


class ExportError(LlamaForgeError):
    """Export cannot proceed or produced something that failed its checks."""


class ExportCancelled(ExportError):
    """The user stopped the export; nothing was left at the target path."""


_SCALAR_FMT: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i", GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}
_NP_FMT: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "<u1", GGUFValueType.INT8: "<i1", GGUFValueType.UINT16: "<u2", GGUFValueType.INT16: "<i2",
    GGUFValueType.UINT32: "<u4", GGUFValueType.INT32: "<i4", GGUFValueType.FLOAT32: "<f4", GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "<u8", GGUFValueType.INT64: "<i8", GGUFValueType.FLOAT64: "<f8",
}


@dataclass(frozen=True)
class KVEntry:
    """One metadata value with its GGUF type. ``raw`` (already encoded payload) wins over ``value``."""

    vtype: GGUFValueType
    value: Any = None
    item_type: GGUFValueType | None = None
    raw: bytes | None = None

    def encode(self) -> bytes:
        if self.raw is not None:
            return self.raw
        return _encode_value(self.vtype, self.value, self.item_type)


def kv(value: Any, vtype: GGUFValueType | None = None, item_type: GGUFValueType | None = None) -> KVEntry:
    """A ``KVEntry`` with the type guessed the way llama.cpp's writer does (str, bool, int->u32/i32, float->f32)."""
    if vtype is None:
        if isinstance(value, str):
            vtype = GGUFValueType.STRING
        elif isinstance(value, bool):
            vtype = GGUFValueType.BOOL
        elif isinstance(value, int):
            vtype = GGUFValueType.UINT32 if value >= 0 else GGUFValueType.INT32
        elif isinstance(value, float):
            vtype = GGUFValueType.FLOAT32
        elif isinstance(value, (list, tuple, np.ndarray)):
            vtype = GGUFValueType.ARRAY
        else:
            raise TypeError(f"cannot store {type(value).__name__} in GGUF metadata")
    if vtype == GGUFValueType.ARRAY and item_type is None:
        first = value[0] if len(value) else ""
        item_type = kv(first.item() if isinstance(first, np.generic) else first).vtype
    return KVEntry(vtype, value, item_type)


def _encode_string(text: str | bytes) -> bytes:
    data = text.encode("utf-8", errors="surrogateescape") if isinstance(text, str) else bytes(text)
    return struct.pack("<Q", len(data)) + data


def _encode_value(vtype: GGUFValueType, value: Any, item_type: GGUFValueType | None) -> bytes:
    fmt = _SCALAR_FMT.get(vtype)
    if fmt is not None:
        return struct.pack(fmt, value)
    if vtype == GGUFValueType.STRING:
        return _encode_string(value)
    if vtype == GGUFValueType.ARRAY:
        if item_type is None:
            raise ValueError("GGUF array needs an item type")
        head = struct.pack("<IQ", int(item_type), len(value))
        if item_type in _NP_FMT:
            return head + np.asarray(value, dtype=_NP_FMT[item_type]).tobytes()
        if item_type == GGUFValueType.STRING:
            return head + b"".join(_encode_string(s) for s in value)
        raise ValueError("nested GGUF arrays are not supported by this writer")
    raise ValueError(f"unknown GGUF value type {vtype!r}")


def kv_from_gguf(src: GgufFile, *, skip: Iterable[str] = ()) -> dict[str, KVEntry]:
    """Every metadata entry of ``src``, in order, big arrays carried as raw bytes (no decoding).

    Why raw: re-encoding a 262k-entry token list through Python objects costs seconds; the bytes are already
    exactly what the output needs.
    """
    skipped = set(skip)
    out: dict[str, KVEntry] = {}
    with open(src.path, "rb") as fh:
        for key, value in src.kv.items():
            if key in skipped or key.startswith("GGUF."):
                continue
            vtype, item_type = src.kv_types[key]
            if isinstance(value, LazyArray):
                fh.seek(value.offset)
                payload = fh.read(value.end - value.offset)
                raw = struct.pack("<IQ", int(value.item_type), value.count) + payload
                out[key] = KVEntry(vtype, None, value.item_type, raw=raw)
            else:
                if vtype == GGUFValueType.ARRAY and item_type is None:
                    continue  # nested arrays: nothing in llama.cpp's metadata uses them
                out[key] = KVEntry(vtype, value, item_type)
    return out


@dataclass
class TensorPlan:
    """What one output tensor will be. ``produce`` is called once, in file order, and returns its bytes, or an
    iterator of byte chunks (row blocks), so a 262k-row embedding never exists whole in float32."""

    name: str
    ne: tuple[int, ...]  # ggml order, fastest dimension first
    ggml_type: GGMLQuantizationType
    produce: Callable[[], np.ndarray | bytes | memoryview | Iterator[np.ndarray]]

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.ne, self.ggml_type)


def tensor_nbytes(ne: Sequence[int], ggml_type: GGMLQuantizationType) -> int:
    block, type_size = GGML_QUANT_SIZES[ggml_type]
    n = 1
    for d in ne:
        n *= int(d)
    if int(ne[0]) % block:
        raise ExportError(f"row length {ne[0]} is not a multiple of the {ggml_type.name} block size {block}")
    return n // block * type_size


def _pad(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


@dataclass(frozen=True)
class WriteProgress:
    """Sent after each tensor: how far the write is, for a progress bar."""

    tensor_index: int
    tensor_count: int
    bytes_done: int
    bytes_total: int
    tensor_name: str


def check_free_space(target: Path, needed: int) -> None:
    """Refuse early, with numbers, rather than filling the disk and failing at 97 %."""
    folder = target.parent
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if free < needed + DISK_MARGIN_BYTES:
        raise ExportError(
            f"not enough free disk space in {folder}: the export needs {human_bytes(needed)}, "
            f"{human_bytes(free)} is free"
        )


def planned_size(kv_data: Mapping[str, KVEntry], tensors: Sequence[TensorPlan], alignment: int = DEFAULT_ALIGNMENT) -> int:
    """The exact size of the file ``write_gguf`` will produce."""
    header = 24
    for key, entry in kv_data.items():
        header += len(_encode_string(key)) + 4 + len(entry.encode())
    for t in tensors:
        header += len(_encode_string(t.name)) + 4 + 8 * len(t.ne) + 12
    return _pad(header, alignment) + sum(_pad(t.nbytes, alignment) for t in tensors)


def write_gguf(
    path: Path | str,
    kv_data: Mapping[str, KVEntry],
    tensors: Sequence[TensorPlan],
    *,
    alignment: int = DEFAULT_ALIGNMENT,
    progress: Callable[[WriteProgress], None] | None = None,
    stop_event: threading.Event | None = None,
) -> int:
    """Write a GGUF v3 file atomically, streaming tensor data; returns the file size.

    ``general.alignment`` in ``kv_data`` (if present) must agree with ``alignment``. Raises ``ExportCancelled``
    when ``stop_event`` is set between tensors; the target path is then untouched.
    """
    path = Path(path)
    if "general.alignment" in kv_data:
        alignment = int(kv_data["general.alignment"].value)
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise ExportError("duplicate tensor names in the export plan")
    offsets: list[int] = []
    rel = 0
    for t in tensors:
        offsets.append(rel)
        rel += _pad(t.nbytes, alignment)
    total_data = rel
    size = planned_size(kv_data, tensors, alignment)
    check_free_space(path, size)

    header = bytearray(b"GGUF")
    header += struct.pack("<IQQ", GGUF_VERSION, len(tensors), len(kv_data))
    for key, entry in kv_data.items():
        header += _encode_string(key)
        header += struct.pack("<I", int(entry.vtype))
        header += entry.encode()
    for t, off in zip(tensors, offsets):
        header += _encode_string(t.name)
        header += struct.pack("<I", len(t.ne))
        header += struct.pack(f"<{len(t.ne)}Q", *(int(d) for d in t.ne))
        header += struct.pack("<IQ", int(t.ggml_type), off)
    header += b"\0" * (_pad(len(header), alignment) - len(header))

    done = 0
    with atomic_open(path, "wb") as fh:
        fh.write(header)
        for i, t in enumerate(tensors):
            if stop_event is not None and stop_event.is_set():
                raise ExportCancelled("export stopped; nothing was written at " + str(path))
            data = t.produce()
            chunks = data if isinstance(data, Iterator) else iter((data,))
            written = 0
            for chunk in chunks:
                buf = memoryview(np.ascontiguousarray(chunk) if isinstance(chunk, np.ndarray) else chunk).cast("B")
                written += buf.nbytes
                if written > t.nbytes:
                    break
                fh.write(buf)
                del buf, chunk
            if written != t.nbytes:
                raise ExportError(
                    f"tensor {t.name}: produced {written} bytes, expected {t.nbytes} for {t.ggml_type.name} {list(t.ne)}"
                )
            pad = _pad(t.nbytes, alignment) - t.nbytes
            if pad:
                fh.write(b"\0" * pad)
            done += t.nbytes + pad
            del data, chunks
            if progress is not None:
                progress(WriteProgress(i + 1, len(tensors), done, total_data, t.name))
    return size


# --- tensor types ---------------------------------------------------------------------------------------

PYTHON_QUANT_TYPES = frozenset({
    GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16, GGMLQuantizationType.Q8_0,
    GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_1, GGMLQuantizationType.Q5_0, GGMLQuantizationType.Q5_1,
})


def encode_tensor(array: np.ndarray, ggml_type: GGMLQuantizationType) -> np.ndarray:
    """float array (numpy order) -> the bytes of ``ggml_type`` (uint8 or typed), via gguf-py's numpy quantizers."""
    arr = np.ascontiguousarray(array, dtype=np.float32)
    if ggml_type == GGMLQuantizationType.F32:
        return arr
    if ggml_type == GGMLQuantizationType.F16:
        return arr.astype(np.float16)
    if ggml_type not in PYTHON_QUANT_TYPES:
        raise ExportError(f"{ggml_type.name} cannot be written in Python; use llama.cpp's quantizer (K-quants)")
    return gguf_quants.quantize(arr, ggml_type)


def decode_tensor(src: GgufFile, name: str) -> np.ndarray:
    """A source tensor as float32 in numpy order (dequantized if needed)."""
    info = src.tensor(name)
    raw = src.tensor_bytes(info)
    if info.ggml_type == GGMLQuantizationType.F32:
        return raw.view(np.float32).reshape(info.shape).copy()
    if info.ggml_type == GGMLQuantizationType.F16:
        return raw.view(np.float16).reshape(info.shape).astype(np.float32)
    rows = src.tensor_array(info)
    try:
        out = gguf_quants.dequantize(rows, info.ggml_type)
    except NotImplementedError:
        raise ExportError(f"tensor {name}: cannot dequantize {info.ggml_type.name}") from None
    return np.asarray(out, dtype=np.float32).reshape(info.shape)


def must_stay_f32(name: str, ne: Sequence[int]) -> bool:
    """As llama.cpp's converter: 1-D tensors, norms and anything that is not a ``.weight`` matrix stay F32."""
    if len(ne) <= 1:
        return True
    if not name.endswith(".weight"):
        return True
    base = name.removesuffix(".weight")
    return base.endswith("norm") or base.endswith("_norm") or base.endswith(("ffn_gate_inp", "pos_embd", "rope_freqs"))


def output_type_for(name: str, ne: Sequence[int], requested: GGMLQuantizationType) -> GGMLQuantizationType:
    """The type a tensor gets for a requested output type: F32 where llama.cpp wants it, F16 where the row
    length does not fit the block size (as llama.cpp's converter falls back), else the request."""
    if must_stay_f32(name, ne):
        return GGMLQuantizationType.F32
    block, _ = GGML_QUANT_SIZES[requested]
    if int(ne[0]) % block:
        return GGMLQuantizationType.F16
    return requested


CHUNK_ELEMENTS = 1 << 24  # 64 MB of float32 per row block


def convert_rows(src: GgufFile, name: str, ggml_type: GGMLQuantizationType) -> Iterator[np.ndarray]:
    """An untouched source tensor converted to ``ggml_type`` in row blocks (bounded memory for big tensors)."""
    info = src.tensor(name)
    if len(info.shape) < 2 or info.n_elements <= CHUNK_ELEMENTS:
        yield encode_tensor(decode_tensor(src, name), ggml_type)
        return
    flat_rows = int(np.prod(info.shape[:-1]))
    step = max(1, CHUNK_ELEMENTS // info.ne[0])
    raw = src.tensor_bytes(info)
    row_bytes = info.nbytes // flat_rows
    for r0 in range(0, flat_rows, step):
        r1 = min(flat_rows, r0 + step)
        block = raw[r0 * row_bytes:r1 * row_bytes]
        yield encode_tensor(_decode_block(block, info.ggml_type, r1 - r0, info.ne[0]), ggml_type)


def _decode_block(block: np.ndarray, ggml_type: GGMLQuantizationType, n_rows: int, row_len: int) -> np.ndarray:
    if ggml_type == GGMLQuantizationType.F32:
        return block.view(np.float32).reshape(n_rows, row_len)
    if ggml_type == GGMLQuantizationType.F16:
        return block.view(np.float16).reshape(n_rows, row_len).astype(np.float32)
    try:
        out = gguf_quants.dequantize(block.reshape(n_rows, -1), ggml_type)
    except NotImplementedError:
        raise ExportError(f"cannot dequantize {ggml_type.name}") from None
    return np.asarray(out, dtype=np.float32).reshape(n_rows, row_len)
