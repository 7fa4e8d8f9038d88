"""Decoding GGUF metadata values from a memory-mapped file: scalars, strings and (lazy) arrays.

Every count and length is checked against the bytes that remain before anything is allocated or
walked; a value that runs past ``limit`` raises ``Truncated``, a wrong type tag ``GgufError``. Arrays of
arrays nest at most ``MAX_ARRAY_DEPTH`` deep and are decoded in one pass (walking each level and then
decoding it again would cost 2^depth).
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterator
from typing import Any

import numpy as np
from gguf import GGUFValueType

from llamaforge_tui.core.errors import GgufError

LAZY_ARRAY_MIN = 64  # arrays shorter than this are decoded eagerly
MAX_ARRAY_DEPTH = 8  # llama.cpp writes at most arrays of arrays; deeper nesting is refused
_ARRAY_HEADER = 12  # item type (u32) + count (u64): the least an inner array takes

_SCALAR_FORMATS: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}
_NUMPY_DTYPES: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "<u1",
    GGUFValueType.INT8: "<i1",
    GGUFValueType.UINT16: "<u2",
    GGUFValueType.INT16: "<i2",
    GGUFValueType.UINT32: "<u4",
    GGUFValueType.INT32: "<i4",
    GGUFValueType.FLOAT32: "<f4",
    GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "<u8",
    GGUFValueType.INT64: "<i8",
    GGUFValueType.FLOAT64: "<f8",
}

class LazyArray:
    """A GGUF array that is located but not decoded. ``len()`` is free; ``load()`` decodes it."""

    def __init__(self, buf: mmap.mmap, offset: int, count: int, item_type: GGUFValueType, end: int) -> None:
        self._buf = buf
        self.offset = offset
        self.count = count
        self.item_type = item_type
        self.end = end
        self._cache: list[Any] | np.ndarray | None = None

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return f"LazyArray({self.item_type.name} x {self.count})"

    def load(self) -> list[Any] | np.ndarray:
        """Numbers come back as a numpy array (copied), strings as a list of ``str``."""
        if self._cache is None:
            if self.item_type == GGUFValueType.STRING:
                self._cache = [decode_text(b) for b in self.iter_bytes()]
            elif self.item_type in _NUMPY_DTYPES:
                self._cache = np.frombuffer(
                    self._buf, dtype=_NUMPY_DTYPES[self.item_type], count=self.count, offset=self.offset
                ).copy()
            else:  # arrays of arrays are decoded by read_value, which fills the cache
                raise GgufError(f"cannot decode an array of {self.item_type.name}")
        return self._cache

    def iter_bytes(self) -> Iterator[bytes]:
        """The raw UTF-8 bytes of each string (string arrays only)."""
        if self.item_type != GGUFValueType.STRING:
            raise TypeError("iter_bytes() is for string arrays")
        buf, pos = self._buf, self.offset
        unpack = struct.Struct("<Q").unpack_from
        for _ in range(self.count):
            (n,) = unpack(buf, pos)
            pos += 8
            yield buf[pos : pos + n]
            pos += n


def decode_text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="surrogateescape")


class Truncated(Exception):
    pass


def need(pos: int, size: int, limit: int) -> None:
    if size < 0 or pos + size > limit:
        raise Truncated


def read_string(buf: mmap.mmap, pos: int, limit: int) -> tuple[bytes, int]:
    need(pos, 8, limit)
    (n,) = struct.unpack_from("<Q", buf, pos)
    pos += 8
    need(pos, n, limit)
    return buf[pos : pos + n], pos + n


def _skip_strings(buf: mmap.mmap, pos: int, count: int, limit: int) -> int:
    unpack = struct.Struct("<Q").unpack_from
    for _ in range(count):
        if pos + 8 > limit:
            raise Truncated
        (n,) = unpack(buf, pos)
        pos += 8 + n
        if pos > limit:
            raise Truncated
    return pos


def read_value(buf: mmap.mmap, pos: int, vtype: GGUFValueType, limit: int, *, lazy: bool,
               depth: int = 0) -> tuple[Any, int]:
    """One value at ``pos`` -> (value, end). Big scalar/string arrays come back as ``LazyArray`` when ``lazy``."""
    fmt = _SCALAR_FORMATS.get(vtype)
    if fmt is not None:
        size = struct.calcsize(fmt)
        need(pos, size, limit)
        return struct.unpack_from(fmt, buf, pos)[0], pos + size
    if vtype == GGUFValueType.STRING:
        raw, pos = read_string(buf, pos, limit)
        return decode_text(raw), pos
    if vtype == GGUFValueType.ARRAY:
        need(pos, 12, limit)
        item_raw, count = struct.unpack_from("<IQ", buf, pos)
        pos += 12
        try:
            item_type = GGUFValueType(item_raw)
        except ValueError:
            raise GgufError(f"unknown array item type {item_raw}") from None
        if item_type in _SCALAR_FORMATS:
            size = struct.calcsize(_SCALAR_FORMATS[item_type])
            need(pos, count * size, limit)
            end = pos + count * size
        elif item_type == GGUFValueType.STRING:
            need(pos, count * 8, limit)  # each string has at least its length prefix
            end = _skip_strings(buf, pos, count, limit)
        else:  # arrays of arrays: rare and small; decoded once, here, with a depth limit
            if depth + 1 >= MAX_ARRAY_DEPTH:
                raise GgufError(f"arrays nested more than {MAX_ARRAY_DEPTH} deep")
            need(pos, count * _ARRAY_HEADER, limit)
            start, items = pos, []
            for _ in range(count):
                item, pos = read_value(buf, pos, item_type, limit, lazy=False, depth=depth + 1)
                items.append(item)
            if not lazy or count < LAZY_ARRAY_MIN:
                return items, pos
            located = LazyArray(buf, start, count, item_type, pos)  # keeps the byte range (the writer copies it)
            located._cache = items
            return located, pos
        arr = LazyArray(buf, pos, count, item_type, end)
        if not lazy or count < LAZY_ARRAY_MIN:
            loaded = arr.load()
            return (loaded.tolist() if isinstance(loaded, np.ndarray) else loaded), end
        return arr, end
    raise GgufError(f"unknown metadata value type {int(vtype)}")
