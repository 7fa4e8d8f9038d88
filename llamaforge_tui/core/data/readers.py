"""File containers (JSONL, JSON, CSV/TSV, plain text) read as a stream of parsed rows with line numbers.

Readers work on bytes and decode one record at a time, so a non-UTF-8 byte, a malformed line or an
over-long line costs exactly one record. JSONL, CSV and text stream: memory does not grow with the
file. A JSON array is one value, so it is read whole (``json`` cannot stream it); use JSONL for big data.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from llamaforge_tui.core.data.records import (
    EXPECTED_SHAPES,
    SHAPES,
    RecordError,
    apply_column_map,
    detect_shape,
    normalize_shape,
)
from llamaforge_tui.core.errors import DatasetError

CONTAINERS = ("jsonl", "json", "csv", "tsv", "text", "textdir")
CONTAINER_ALIASES = {"ndjson": "jsonl", "jsonlines": "jsonl", "txt": "text", "plain": "text", "dir": "textdir"}
EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".jsonlines": "jsonl", ".json": "json", ".csv": "csv",
              ".tsv": "tsv", ".tab": "tsv", ".txt": "text", ".text": "text", ".md": "text"}
TEXT_DIR_SUFFIXES = (".txt", ".text", ".md")
DEFAULT_MAX_RECORD_BYTES = 8 * 1024 * 1024  # one record (line, row, paragraph) larger than this is rejected
DETECT_ROWS = 50

Progress = Callable[[int, int], None]  # (bytes read, total bytes)
Row = tuple[int, Any]  # (line, parsed mapping) or (line, RecordError)


@dataclass(frozen=True, slots=True)
class DatasetFormat:
    container: str  # jsonl | json | csv | tsv | text | textdir
    shape: str  # chat | sharegpt | alpaca | prompt_completion | text | document

    def __str__(self) -> str:
        return f"{self.shape} ({self.container})"


def parse_format_spec(spec: str | None) -> tuple[str | None, str | None]:
    """``"jsonl"``, ``"alpaca"``, ``"csv:alpaca"`` or ``None`` -> (container, shape), either may be None."""
    if not spec:
        return None, None
    container = shape = None
    for part in re.split(r"[:/+]", spec.strip().lower()):
        if not part:
            continue
        if part in CONTAINERS or part in CONTAINER_ALIASES:
            if part == "text" and container is not None:  # "csv:text" means the text shape
                shape = "text"
                continue
            container = CONTAINER_ALIASES.get(part, part)
            continue
        try:
            shape = normalize_shape(part)
        except KeyError:
            raise DatasetError(
                f"unknown dataset format {spec!r}; file formats: {', '.join(CONTAINERS[:-1])}; "
                f"record shapes: {', '.join(SHAPES)} (combine as e.g. 'csv:alpaca')") from None
    return container, shape


def _sniff(path: Path) -> bytes:
    with path.open("rb") as fh:
        return fh.read(64 * 1024)


def detect_container(path: Path) -> str:
    if path.is_dir():
        return "textdir"
    if path.suffix.lower() == ".parquet":
        raise DatasetError(f"{path}: Parquet is not supported (pyarrow is not a dependency); convert it to JSONL")
    head = _sniff(path)
    if b"\x00" in head:
        raise DatasetError(f"{path} looks like a binary file; expected JSONL, JSON, CSV/TSV or plain text")
    by_ext = EXTENSIONS.get(path.suffix.lower())
    if by_ext in ("csv", "tsv", "text", "jsonl"):
        return by_ext
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if stripped.startswith(b"["):
        return "json"
    if stripped.startswith(b"{"):
        first_line = stripped.split(b"\n", 1)[0]
        try:
            json.loads(first_line)
            return "jsonl"  # a whole object on the first line: one record per line
        except ValueError:
            return "json"
    return by_ext or "text"


# ---------------------------------------------------------------------------------------------- JSONL

def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _BadBytes(f"not valid UTF-8: byte 0x{raw[exc.start]:02x} at column {exc.start + 1}") from None


class _BadBytes(ValueError):
    pass


def _capped_lines(fh: BinaryIO, max_bytes: int) -> Iterator[tuple[int, bytes | None, int]]:
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


def _too_long(size: int, max_bytes: int) -> str:
    return f"over-long record: {size:,} bytes, over the limit of {max_bytes:,} bytes"


def _jsonl_rows(path: Path, max_bytes: int, progress: Progress | None) -> Iterator[Row]:
    total = path.stat().st_size
    done = 0
    with path.open("rb") as fh:
        for lineno, raw, size in _capped_lines(fh, max_bytes):
            done += size
            if progress is not None and lineno % 256 == 0:
                progress(done, total)
            if raw is None:
                yield lineno, RecordError(lineno, _too_long(size, max_bytes))
                continue
            if lineno == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            if not raw.strip():
                continue
            try:
                yield lineno, json.loads(_decode(raw))
            except _BadBytes as exc:
                yield lineno, RecordError(lineno, str(exc))
            except json.JSONDecodeError as exc:
                yield lineno, RecordError(lineno, f"malformed JSON: {exc.msg} at column {exc.colno}")
    if progress is not None:
        progress(total, total)


# ---------------------------------------------------------------------------------------------- JSON

_ARRAY_KEYS = ("data", "train", "records", "examples", "rows", "items", "dataset", "samples")


def _json_rows(path: Path, max_bytes: int, progress: Progress | None) -> Iterator[Row]:
    raw = path.read_bytes()
    # surrogateescape keeps bad bytes as lone surrogates: the record holding them is rejected, not the file.
    text = raw.decode("utf-8", errors="surrogateescape").lstrip("\ufeff")
    decoder = json.JSONDecoder()
    pos = len(text) - len(text.lstrip())
    if pos >= len(text):
        return
    if text[pos] == "{":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            yield exc.lineno, RecordError(exc.lineno, f"malformed JSON: {exc.msg} at column {exc.colno}")
            return
        if detect_shape(obj) is not None:  # a single record
            yield text.count("\n", 0, pos) + 1, obj
            return
        key = next((k for k in _ARRAY_KEYS if isinstance(obj.get(k), list)), None) or next(
            (k for k, v in obj.items() if isinstance(v, list)), None)
        if key is None:
            raise DatasetError(f"{path}: the JSON object holds no array of records (keys: {', '.join(map(str, obj))})")
        match = re.search(r'"' + re.escape(json.dumps(key)[1:-1]) + r'"\s*:\s*\[', text)
        if match is None:  # escaped key spelling: fall back to item numbers
            for i, item in enumerate(obj[key], start=1):
                yield i, item
            return
        pos = match.end() - 1
    elif text[pos] != "[":
        raise DatasetError(f"{path}: expected a JSON array of records or an object holding one")
    pos += 1  # past "["
    line, counted = 1 + text.count("\n", 0, pos), pos
    ws = re.compile(r"[\s,]*")
    while True:
        pos = ws.match(text, pos).end()
        if pos >= len(text) or text[pos] == "]":
            break
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            item, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            yield exc.lineno, RecordError(
                exc.lineno, f"malformed JSON: {exc.msg} at column {exc.colno}; the rest of the file cannot be read")
            return
        if end - pos > max_bytes:
            yield line, RecordError(line, _too_long(end - pos, max_bytes))
        else:
            yield line, item
        pos = end
        if progress is not None:
            progress(pos, len(text))


# ---------------------------------------------------------------------------------------------- CSV / TSV

_JSON_COLUMNS = ("messages", "conversations")


def _csv_rows(path: Path, delimiter: str, max_bytes: int, progress: Progress | None) -> Iterator[Row]:
    csv.field_size_limit(max(max_bytes, 131072))
    total = path.stat().st_size
    with path.open("rb") as braw:
        fh = io.TextIOWrapper(braw, encoding="utf-8-sig", errors="surrogateescape", newline="")
        reader = csv.reader(fh, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            return
        if not any(h.strip() for h in header):
            raise DatasetError(f"{path}: the first row must be a header naming the columns")
        header = [h.strip() for h in header]
        prev_end = reader.line_num
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                line = prev_end + 1
                prev_end = reader.line_num
                yield line, RecordError(line, f"malformed CSV row: {exc}")
                continue
            line, prev_end = prev_end + 1, reader.line_num
            if not fields or not any(f.strip() for f in fields):
                continue
            if len(fields) != len(header):
                yield line, RecordError(line, f"row has {len(fields)} fields, the header has {len(header)}")
                continue
            row: dict[str, Any] = dict(zip(header, fields))
            for col in _JSON_COLUMNS:
                value = row.get(col)
                if isinstance(value, str) and value.lstrip().startswith("["):
                    try:
                        row[col] = json.loads(value)
                    except json.JSONDecodeError as exc:
                        row = {"__error__": f"column '{col}' is not valid JSON: {exc.msg}"}
                        break
            if "__error__" in row:
                yield line, RecordError(line, row["__error__"])
                continue
            if progress is not None and line % 256 == 0:
                progress(braw.tell(), total)
            yield line, row
    if progress is not None:
        progress(total, total)


# ---------------------------------------------------------------------------------------------- text

def _paragraph_rows(path: Path, max_bytes: int, progress: Progress | None) -> Iterator[Row]:
    """Blank-line separated documents, each reported at its first line."""
    total = path.stat().st_size
    done = size = start = 0
    buf: list[bytes] = []
    with path.open("rb") as fh:
        for lineno, raw, n in _capped_lines(fh, max_bytes):
            done += n
            if raw is not None and not raw.strip():
                if size:
                    yield _paragraph(start, buf, size, max_bytes)
                buf, size = [], 0
                continue
            if not size:
                start = lineno
            size += n
            if raw is None or size > max_bytes:
                buf = []  # over-long: stop holding it, report it when the paragraph ends
                size = max(size, max_bytes + 1)
            else:
                buf.append(raw)
            if progress is not None and lineno % 1024 == 0:
                progress(done, total)
        if size:
            yield _paragraph(start, buf, size, max_bytes)
    if progress is not None:
        progress(total, total)


def _paragraph(line: int, buf: list[bytes], size: int, max_bytes: int) -> Row:
    if size > max_bytes:
        return line, RecordError(line, _too_long(size, max_bytes))
    try:
        return line, {"text": _decode(b"".join(buf)).strip("\r\n").removeprefix("\ufeff")}
    except _BadBytes as exc:
        return line, RecordError(line, f"{exc} (in the paragraph starting here)")


def _document_rows(paths: list[Path], max_bytes: int, progress: Progress | None) -> Iterator[Row]:
    """One document per file; the 'line' of file N in a folder is N (the reason names the file)."""
    for i, p in enumerate(paths, start=1):
        size = p.stat().st_size
        label = p.name if len(paths) > 1 else None
        if size > max_bytes:
            yield i, RecordError(i, _too_long(size, max_bytes) + (f" ({label})" if label else ""))
            continue
        try:
            yield i, {"text": _decode(p.read_bytes()).removeprefix("\ufeff")}
        except _BadBytes as exc:
            yield i, RecordError(i, f"{exc}" + (f" ({label})" if label else ""))
        if progress is not None:
            progress(i, len(paths))


def text_dir_files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_DIR_SUFFIXES)


# ---------------------------------------------------------------------------------------------- dispatch

def iter_rows(path: Path, fmt: DatasetFormat, *, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
              progress: Progress | None = None) -> Iterator[Row]:
    """Parsed rows of ``path`` (mappings, not yet validated) or RecordErrors, each with its line."""
    c = fmt.container
    if c == "jsonl":
        return _jsonl_rows(path, max_record_bytes, progress)
    if c == "json":
        return _json_rows(path, max_record_bytes, progress)
    if c in ("csv", "tsv"):
        return _csv_rows(path, "\t" if c == "tsv" else ",", max_record_bytes, progress)
    if c == "textdir":
        return _document_rows(text_dir_files(path), max_record_bytes, progress)
    if c == "text":
        if fmt.shape == "document":
            return _document_rows([path], max_record_bytes, progress)
        return _paragraph_rows(path, max_record_bytes, progress)
    raise DatasetError(f"unknown file format {c!r}; expected one of {', '.join(CONTAINERS)}")


def detect_format(path: str | Path, format: str | None = None,
                  column_map: Mapping[str, str] | None = None) -> DatasetFormat:
    """Container from the extension/content, shape from the first records' keys (or from ``format``)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(f"dataset not found: {path}")
    container, shape = parse_format_spec(format)
    if container is None:
        container = detect_container(path)
    if container == "textdir":
        if not text_dir_files(path):
            raise DatasetError(f"{path}: the folder holds no .txt/.md files (one document per file)")
        return DatasetFormat("textdir", "document")
    if path.is_dir():
        raise DatasetError(f"{path} is a folder; give a dataset file (or a folder of .txt files)")
    if path.stat().st_size == 0:
        raise DatasetError(f"empty dataset: {path} is empty; expected records with {EXPECTED_SHAPES}")
    if container == "text":
        return DatasetFormat("text", shape if shape in ("text", "document") else "text")
    if shape is not None:
        return DatasetFormat(container, shape)
    seen_keys: list[str] | None = None
    n_rows = 0
    for _line, row in iter_rows(path, DatasetFormat(container, "text")):
        if isinstance(row, RecordError):
            continue
        n_rows += 1
        if isinstance(row, Mapping):
            mapped = apply_column_map(row, column_map)
            found = detect_shape(mapped)
            if found is not None:
                return DatasetFormat(container, found)
            if seen_keys is None:
                seen_keys = [str(k) for k in mapped]
        if n_rows >= DETECT_ROWS:
            break
    if n_rows == 0 and seen_keys is None:
        # Nothing parsed: either nothing at all, or only bad lines (those are reported by the loader).
        return DatasetFormat(container, "chat")
    what = f"the first records have keys: {', '.join(seen_keys)}" if seen_keys else "the records are not objects"
    hint = " (map columns with --column FIELD=COLUMN)" if container in ("csv", "tsv") else ""
    raise DatasetError(f"cannot detect the record format of {path}: {what}; expected {EXPECTED_SHAPES}{hint}")
