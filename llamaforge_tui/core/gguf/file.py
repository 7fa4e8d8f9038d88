"""A fast, lazy, defensive GGUF reader.

Why not ``gguf.GGUFReader``: it builds Python objects for every element of every array up front, which
takes ~9 s on a 262k-token vocabulary. Listing a store of models must be instant, so this reader parses
only the header, walks past big arrays without decoding them (``LazyArray``), and memory-maps tensor
data (nothing is read until asked for).

It is also defensive: every count and length is checked against the file size before anything is
allocated, so a truncated, corrupt or hostile file raises ``GgufError`` with a specific reason instead of
crashing or allocating gigabytes.
"""

from __future__ import annotations

import mmap
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType, LlamaFileType

from llamaforge_tui.core.errors import GgufError
from llamaforge_tui.core.gguf.values import LazyArray, Truncated, decode_text, need, read_string, read_value

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_TENSORS = 1_000_000
MAX_KV = 1_000_000
MAX_DIMS = 8

FILE_TYPE_NAMES: dict[int, str] = {
    int(ft): ft.name.removeprefix("MOSTLY_").removeprefix("ALL_") for ft in LlamaFileType if ft.name != "GUESSED"
}


def file_type_name(value: int | None) -> str | None:
    if value is None:
        return None
    return FILE_TYPE_NAMES.get(int(value), f"unknown file type {value}")


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ne: tuple[int, ...]  # ggml order: fastest-varying dimension first
    ggml_type: GGMLQuantizationType
    offset: int  # absolute offset in the file
    nbytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        """numpy/torch order (the reverse of ``ne``)."""
        return tuple(reversed(self.ne))

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.ne:
            n *= d
        return n

    @property
    def type_name(self) -> str:
        return self.ggml_type.name


class GgufFile:
    """Header, metadata and tensor directory of a GGUF file; tensor data is memory-mapped on demand.

    Works on files without a ``.gguf`` extension (Ollama blobs). Use as a context manager, or call
    ``close()``; arrays returned by ``tensor_bytes`` keep the mapping alive on their own.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:  # non-blocking: a FIFO must not hang the open; only regular files are read
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise GgufError(f"{self.path}: file not found") from None
        except PermissionError:
            raise GgufError(f"{self.path}: permission denied") from None
        except OSError as exc:
            raise GgufError(f"{self.path}: cannot open ({exc.strerror})") from None
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise GgufError(f"{self.path}: is a directory, not a GGUF file")
            if not stat.S_ISREG(st.st_mode):
                raise GgufError(f"{self.path}: not a regular file (a FIFO, socket or device)")
            self.file_size = st.st_size
            if self.file_size < 24:
                raise GgufError(f"{self.path}: too small to be a GGUF file ({self.file_size} bytes)")
            try:
                self._buf = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError, OverflowError) as exc:  # ENOMEM, no address space, a file that shrank
                reason = os.strerror(exc.errno) if isinstance(exc, OSError) and exc.errno else str(exc)
                raise GgufError(f"{self.path}: cannot map the file ({reason})") from None
        finally:
            os.close(fd)
        try:
            self._parse()
        except Truncated:
            self.close()
            raise GgufError(f"{self.path}: truncated or corrupt GGUF header") from None
        except GgufError as exc:
            self.close()
            msg = str(exc)
            raise GgufError(msg if msg.startswith(str(self.path)) else f"{self.path}: {msg}") from None

    open = classmethod(lambda cls, path: cls(path))  # GgufFile.open(path), for readability at call sites

    # -- parsing ---------------------------------------------------------------------------------
    def _parse(self) -> None:
        buf, limit = self._buf, self.file_size
        magic = buf[:4]
        if magic != GGUF_MAGIC:
            raise GgufError(f"not a GGUF file (magic {magic!r}, expected b'GGUF')")
        (version,) = struct.unpack_from("<I", buf, 4)
        if version not in SUPPORTED_VERSIONS:
            swapped = struct.unpack_from(">I", buf, 4)[0]
            if swapped in SUPPORTED_VERSIONS:
                raise GgufError("big-endian GGUF files are not supported")
            raise GgufError(f"unsupported GGUF version {version} (supported: {', '.join(map(str, SUPPORTED_VERSIONS))})")
        self.version = version
        n_tensors, n_kv = struct.unpack_from("<QQ", buf, 8)
        if n_tensors > MAX_TENSORS or n_kv > MAX_KV:
            raise GgufError(f"absurd header counts ({n_tensors} tensors, {n_kv} metadata keys)")
        pos = 24
        self.kv: dict[str, Any] = {}
        self.kv_types: dict[str, tuple[GGUFValueType, GGUFValueType | None]] = {}
        for _ in range(n_kv):
            raw_key, pos = read_string(buf, pos, limit)
            key = decode_text(raw_key)
            need(pos, 4, limit)
            (vt,) = struct.unpack_from("<I", buf, pos)
            pos += 4
            try:
                vtype = GGUFValueType(vt)
            except ValueError:
                raise GgufError(f"metadata key {key!r} has unknown value type {vt}") from None
            item_type = None
            if vtype == GGUFValueType.ARRAY:
                need(pos, 4, limit)
                (item_raw,) = struct.unpack_from("<I", buf, pos)
                item_type = GGUFValueType(item_raw) if item_raw in GGUFValueType._value2member_map_ else None
            value, pos = read_value(buf, pos, vtype, limit, lazy=True)
            self.kv[key] = value
            self.kv_types[key] = (vtype, item_type)
        alignment = self.kv.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise GgufError(f"invalid general.alignment {alignment!r}")
        self.alignment = alignment
        infos: list[tuple[str, tuple[int, ...], GGMLQuantizationType, int]] = []
        for _ in range(n_tensors):
            raw_name, pos = read_string(buf, pos, limit)
            name = decode_text(raw_name)
            need(pos, 4, limit)
            (n_dims,) = struct.unpack_from("<I", buf, pos)
            pos += 4
            if n_dims == 0 or n_dims > MAX_DIMS:
                raise GgufError(f"tensor {name!r} has {n_dims} dimensions")
            need(pos, 8 * n_dims + 12, limit)
            ne = struct.unpack_from(f"<{n_dims}Q", buf, pos)
            pos += 8 * n_dims
            type_raw, rel_offset = struct.unpack_from("<IQ", buf, pos)
            pos += 12
            try:
                gtype = GGMLQuantizationType(type_raw)
            except ValueError:
                raise GgufError(f"tensor {name!r} has unknown ggml type {type_raw}") from None
            infos.append((name, tuple(int(d) for d in ne), gtype, rel_offset))
        self.data_offset = (pos + alignment - 1) // alignment * alignment
        self.tensors: list[TensorInfo] = []
        self._by_name: dict[str, TensorInfo] = {}
        for name, ne, gtype, rel in infos:
            if gtype not in GGML_QUANT_SIZES:
                raise GgufError(f"tensor {name!r} has ggml type {gtype.name}, which has no known block size")
            block, type_size = GGML_QUANT_SIZES[gtype]
            n = 1
            for d in ne:
                n *= d
            if ne[0] % block:
                raise GgufError(f"tensor {name!r}: row length {ne[0]} is not a multiple of the {gtype.name} block ({block})")
            nbytes = n // block * type_size
            offset = self.data_offset + rel
            if offset + nbytes > limit:
                raise GgufError(
                    f"truncated: tensor {name!r} needs bytes up to {offset + nbytes}, file has {limit}"
                )
            info = TensorInfo(name, ne, gtype, offset, nbytes)
            self.tensors.append(info)
            self._by_name[name] = info

    # -- metadata --------------------------------------------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        value = self.kv.get(key, default)
        if isinstance(value, LazyArray):
            loaded = value.load()
            return loaded.tolist() if isinstance(loaded, np.ndarray) and value.item_type != GGUFValueType.STRING else loaded
        return value

    @property
    def architecture(self) -> str | None:
        arch = self.kv.get("general.architecture")
        return arch if isinstance(arch, str) else None

    def arch_get(self, suffix: str, default: Any = None) -> Any:
        """``<arch>.<suffix>``, e.g. ``arch_get("context_length")``."""
        return self.get(f"{self.architecture}.{suffix}", default)

    def array_len(self, key: str) -> int | None:
        value = self.kv.get(key)
        return len(value) if isinstance(value, (LazyArray, list)) else None

    # -- tensors ---------------------------------------------------------------------------------
    def tensor(self, name: str) -> TensorInfo:
        try:
            return self._by_name[name]
        except KeyError:
            raise GgufError(f"{self.path}: no tensor named {name!r}") from None

    def has_tensor(self, name: str) -> bool:
        return name in self._by_name

    def tensor_bytes(self, info: TensorInfo) -> np.ndarray:
        """The tensor's raw bytes, zero-copy from the memory map."""
        return np.frombuffer(self._buf, dtype=np.uint8, count=info.nbytes, offset=info.offset)

    def tensor_array(self, info: TensorInfo) -> np.ndarray:
        """Typed view for plain types (numpy shape); quantized types as uint8 rows of blocks."""
        raw = self.tensor_bytes(info)
        plain = {
            GGMLQuantizationType.F32: np.float32,
            GGMLQuantizationType.F16: np.float16,
            GGMLQuantizationType.BF16: np.uint16,
            GGMLQuantizationType.F64: np.float64,
            GGMLQuantizationType.I8: np.int8,
            GGMLQuantizationType.I16: np.int16,
            GGMLQuantizationType.I32: np.int32,
            GGMLQuantizationType.I64: np.int64,
        }.get(info.ggml_type)
        if plain is not None:
            return raw.view(plain).reshape(info.shape)
        block, type_size = GGML_QUANT_SIZES[info.ggml_type]
        row_bytes = info.ne[0] // block * type_size
        return raw.reshape(*info.shape[:-1], row_bytes)

    @property
    def tensor_data_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    # -- lifetime --------------------------------------------------------------------------------
    def close(self) -> None:
        buf = getattr(self, "_buf", None)
        if buf is not None:
            try:
                buf.close()
            except BufferError:
                pass  # numpy views still point into the map; it closes when they are gone

    def __enter__(self) -> GgufFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
