"""The JSONL and JSON containers, and the bounded line reading the text containers share.

Split from ``readers`` so each reads on its own. Every file is opened as a regular file only (a FIFO would
block for ever), lines are read with a cap (a 10 GB line without a newline costs one record, not memory),
and JSON is parsed with explicit limits (``fsutil.loads_json``): nesting past ``MAX_JSON_DEPTH`` or a number
past Python's digit limit is one record's error, never an exception out of the reader.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from llamaforge_tui.core.data.records import RecordError, detect_shape
from llamaforge_tui.core.errors import DatasetError
from llamaforge_tui.core.fsutil import MAX_JSON_DEPTH, json_depth_ok, loads_json, open_regular, read_regular

Progress = Callable[[int, int], None]  # (bytes read, total bytes)
Row = tuple[int, Any]  # (line, parsed mapping) or (line, RecordError)
# A JSON container is one value, read whole; past this size, JSONL (which streams) is the answer.
MAX_JSON_FILE_BYTES = 1024 * 1024 * 1024


class BadBytes(ValueError):
    pass


def decode_utf8(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadBytes(f"not valid UTF-8: byte 0x{raw[exc.start]:02x} at column {exc.start + 1}") from None


def capped_lines(fh: BinaryIO, max_bytes: int) -> Iterator[tuple[int, bytes | None, int]]:
    """(line number, line bytes or None when over ``max_bytes``, line size) without reading a huge line whole."""
    lineno = 0
    while True:
        raw = fh.readline(max_bytes + 1)
        if not raw:
            return
        lineno += 1
        if len(raw) > max_bytes and not raw.endswith(b"\n"):
            size = len(raw)
            while True:  # skip the rest of the line in bounded chunks
                chunk = fh.readline(1 << 20)
                size += len(chunk)
                if not chunk or chunk.endswith(b"\n"):
                    break
            yield lineno, None, size
            continue
        yield lineno, raw, len(raw)


def too_long(size: int, max_bytes: int) -> str:
    return f"over-long record: {size:,} bytes, over the limit of {max_bytes:,} bytes"


def json_reason(exc: ValueError) -> str:
    """A record error's reason for JSON that did not parse (malformed, or past a limit)."""
    if isinstance(exc, json.JSONDecodeError):
        return f"malformed JSON: {exc.msg} at column {exc.colno}"
    return str(exc)


def jsonl_rows(path: Path, max_bytes: int, progress: Progress | None) -> Iterator[Row]:
    with open_regular(path) as fh:
        total = path.stat().st_size
        done = 0
        for lineno, raw, size in capped_lines(fh, max_bytes):
            done += size
            if progress is not None and lineno % 256 == 0:
                progress(done, total)
            if raw is None:
                yield lineno, RecordError(lineno, too_long(size, max_bytes))
                continue
            if lineno == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            if not raw.strip():
                continue
            try:
                yield lineno, loads_json(decode_utf8(raw))
            except ValueError as exc:  # BadBytes, JSONDecodeError, JsonLimitError
                yield lineno, RecordError(lineno, str(exc) if isinstance(exc, BadBytes) else json_reason(exc))
        if progress is not None:
            progress(total, total)


# ---------------------------------------------------------------------------------------------- JSON

_ARRAY_KEYS = ("data", "train", "records", "examples", "rows", "items", "dataset", "samples")
_WS = re.compile(r"[ \t\r\n]*")


class _TooDeep(ValueError):
    pass


def _decode_at(decoder: json.JSONDecoder, text: str, pos: int, max_depth: int) -> tuple[Any, int]:
    """One JSON value at ``pos``; a value nested past ``max_depth`` raises ``_TooDeep`` (its end known, so the
    caller can go on after it). RecursionError and over-long numbers raise ``JsonLimitError``-like ValueErrors."""
    try:
        value, end = decoder.raw_decode(text, pos)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise ValueError(f"JSON nested deeper than {max_depth} levels") from None
    except ValueError as exc:
        raise ValueError(f"a number in the JSON is too long ({exc})") from None
    if not json_depth_ok(text[pos:end], max_depth):
        exc = _TooDeep(f"JSON nested deeper than {max_depth} levels")
        exc.end = end  # type: ignore[attr-defined]
        raise exc
    return value, end


def _members(decoder: json.JSONDecoder, text: str, pos: int) -> dict[str, tuple[int, Any]]:
    """The top-level object at ``pos`` (a ``{``), parsed member by member: key -> (value offset, value).

    Reading the structure (not searching the text) is what finds the records' array: a nested
    ``"data": [...]`` under another key is not mistaken for the top-level one. Duplicate keys keep the last,
    as ``json.loads`` does.
    """
    out: dict[str, tuple[int, Any]] = {}
    i = _WS.match(text, pos + 1).end()
    if text.startswith("}", i):
        end = i + 1
    else:
        while True:
            if not text.startswith('"', i):
                raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, i)
            key, i = decoder.raw_decode(text, i)
            i = _WS.match(text, i).end()
            if not text.startswith(":", i):
                raise json.JSONDecodeError("Expecting ':' delimiter", text, i)
            start = _WS.match(text, i + 1).end()
            value, i = _decode_at(decoder, text, start, MAX_JSON_DEPTH + 1)  # items are checked one by one
            out[key] = (start, value)
            i = _WS.match(text, i).end()
            if text.startswith(",", i):
                i = _WS.match(text, i + 1).end()
                continue
            if text.startswith("}", i):
                end = i + 1
                break
            raise json.JSONDecodeError("Expecting ',' delimiter", text, i)
    if _WS.match(text, end).end() != len(text):
        raise json.JSONDecodeError("Extra data", text, _WS.match(text, end).end())
    return out


def json_rows(path: Path, max_bytes: int, progress: Progress | None) -> Iterator[Row]:
    try:
        raw = read_regular(path, MAX_JSON_FILE_BYTES)
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror or exc}); a JSON array is read whole, so "
                           "convert a big dataset to JSONL (one record per line)") from None
    # surrogateescape keeps bad bytes as lone surrogates: the record holding them is rejected, not the file.
    text = raw.decode("utf-8", errors="surrogateescape").lstrip("\ufeff")
    decoder = json.JSONDecoder()
    pos = _WS.match(text).end()
    if pos >= len(text):
        return
    if text[pos] == "{":
        try:
            members = _members(decoder, text, pos)
        except ValueError as exc:
            line = exc.lineno if isinstance(exc, json.JSONDecodeError) else text.count("\n", 0, pos) + 1
            yield line, RecordError(line, json_reason(exc))
            return
        obj = {k: v for k, (_, v) in members.items()}
        if detect_shape(obj) is not None:  # a single record
            yield text.count("\n", 0, pos) + 1, obj
            return
        key = next((k for k in _ARRAY_KEYS if isinstance(obj.get(k), list)), None) or next(
            (k for k, v in obj.items() if isinstance(v, list)), None)
        if key is None:
            keys = ", ".join(k[:40] for k in list(obj)[:20])
            raise DatasetError(f"{path}: the JSON object holds no array of records (keys: {keys})")
        pos = members[key][0]
    elif text[pos] != "[":
        raise DatasetError(f"{path}: expected a JSON array of records or an object holding one")
    yield from _array_items(decoder, text, pos, max_bytes, progress)


def _array_items(decoder: json.JSONDecoder, text: str, pos: int, max_bytes: int,
                 progress: Progress | None) -> Iterator[Row]:
    """The items of the array starting at ``pos`` (its ``[``), each with the line it starts on."""
    pos += 1
    line, counted = 1 + text.count("\n", 0, pos), pos
    ws = re.compile(r"[\s,]*")
    while True:
        pos = ws.match(text, pos).end()
        if pos >= len(text) or text[pos] == "]":
            break
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            item, end = _decode_at(decoder, text, pos, MAX_JSON_DEPTH)
        except _TooDeep as exc:
            yield line, RecordError(line, str(exc))
            pos = exc.end  # type: ignore[attr-defined]
            continue
        except ValueError as exc:
            err_line = exc.lineno if isinstance(exc, json.JSONDecodeError) else line
            yield err_line, RecordError(err_line, json_reason(exc) + "; the rest of the file cannot be read")
            return
        if end - pos > max_bytes:
            yield line, RecordError(line, too_long(end - pos, max_bytes))
        else:
            yield line, item
        pos = end
        if progress is not None:
            progress(pos, len(text))
