"""File containers (JSONL, JSON, CSV/TSV, plain text) read as a stream of parsed rows with line numbers.

Readers work on bytes and decode one record at a time, so a non-UTF-8 byte, a malformed line or an
over-long line costs exactly one record. JSONL, CSV and text stream: memory does not grow with the
file. A JSON array is one value, so it is read whole (``json`` cannot stream it); use JSONL for big data.
"""

from __future__ import annotations

import csv
import os
import re
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from llamaforge_tui.core.data.json_rows import (
    BadBytes,
    Progress,
    Row,
    capped_lines,
    decode_utf8,
    json_reason,
    json_rows,
    jsonl_rows,
    too_long,
)
from llamaforge_tui.core.data.records import (
    EXPECTED_SHAPES,
    SHAPES,
    RecordError,
    apply_column_map,
    detect_shape,
    normalize_shape,
    shown,
)
from llamaforge_tui.core.errors import DatasetError
from llamaforge_tui.core.fsutil import FileTooLarge, loads_json, open_regular, read_regular

CONTAINERS = ("jsonl", "json", "csv", "tsv", "text", "textdir")
CONTAINER_ALIASES = {"ndjson": "jsonl", "jsonlines": "jsonl", "txt": "text", "plain": "text", "dir": "textdir"}
EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".jsonlines": "jsonl", ".json": "json", ".csv": "csv",
              ".tsv": "tsv", ".tab": "tsv", ".txt": "text", ".text": "text", ".md": "text"}
TEXT_DIR_SUFFIXES = (".txt", ".text", ".md")
DEFAULT_MAX_RECORD_BYTES = 8 * 1024 * 1024  # one record (line, row, paragraph) larger than this is rejected
DETECT_ROWS = 50


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
    try:
        with open_regular(path) as fh:
            return fh.read(64 * 1024)
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from None


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
            loads_json(first_line)
            return "jsonl"  # a whole object on the first line: one record per line
        except (ValueError, UnicodeDecodeError):  # malformed, too deep, a number too long
            return "json"
    return by_ext or "text"


# ---------------------------------------------------------------------------------------------- CSV / TSV

_JSON_COLUMNS = ("messages", "conversations")


class _LineTooLong(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


class _CappedText:
    """The file's lines, decoded, for ``csv.reader``: a line over ``max_bytes`` raises ``_LineTooLong`` (the
    reader survives it and goes on), so a huge line is skipped in chunks instead of being read whole."""

    def __init__(self, fh: BinaryIO, max_bytes: int) -> None:
        self._lines = capped_lines(fh, max_bytes)
        self._first = True

    def __iter__(self) -> _CappedText:
        return self

    def __next__(self) -> str:
        _lineno, raw, size = next(self._lines)
        if raw is None:
            raise _LineTooLong(size)
        if self._first:
            raw, self._first = raw.removeprefix(b"\xef\xbb\xbf"), False
        return raw.decode("utf-8", errors="surrogateescape")


def _csv_rows(path: Path, delimiter: str, max_bytes: int, progress: Progress | None) -> Iterator[Row]:
    csv.field_size_limit(max(max_bytes, 131072))
    total = path.stat().st_size
    with open_regular(path) as braw:
        reader = csv.reader(_CappedText(braw, max_bytes), delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            return
        except (csv.Error, _LineTooLong) as exc:
            reason = too_long(exc.size, max_bytes) if isinstance(exc, _LineTooLong) else str(exc)
            raise DatasetError(f"{path}: the header row cannot be read ({reason})") from None
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
            except _LineTooLong as exc:
                prev_end += 1
                yield prev_end, RecordError(prev_end, too_long(exc.size, max_bytes))
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
                        row[col] = loads_json(value)
                    except ValueError as exc:  # malformed, too deep, a number too long
                        row = {"__error__": f"column '{col}' is not valid JSON: {json_reason(exc)}"}
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
    with open_regular(path) as fh:
        for lineno, raw, n in capped_lines(fh, max_bytes):
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
        return line, RecordError(line, too_long(size, max_bytes))
    try:
        return line, {"text": decode_utf8(b"".join(buf)).strip("\r\n").removeprefix("\ufeff")}
    except BadBytes as exc:
        return line, RecordError(line, f"{exc} (in the paragraph starting here)")


def _document_rows(paths: list[Path], max_bytes: int, progress: Progress | None) -> Iterator[Row]:
    """One document per file; the 'line' of file N in a folder is N (the reason names the file)."""
    for i, p in enumerate(paths, start=1):
        label = f" ({p.name})" if len(paths) > 1 else ""
        try:
            data = read_regular(p, max_bytes)
        except FileTooLarge:
            yield i, RecordError(i, too_long(p.stat().st_size, max_bytes) + label)
            continue
        except OSError as exc:
            yield i, RecordError(i, f"cannot read the file: {exc.strerror or exc}{label}")
            continue
        try:
            yield i, {"text": decode_utf8(data).removeprefix("\ufeff")}
        except BadBytes as exc:
            yield i, RecordError(i, f"{exc}{label}")
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
        rows = jsonl_rows(path, max_record_bytes, progress)
    elif c == "json":
        rows = json_rows(path, max_record_bytes, progress)
    elif c in ("csv", "tsv"):
        rows = _csv_rows(path, "\t" if c == "tsv" else ",", max_record_bytes, progress)
    elif c == "textdir":
        rows = _document_rows(text_dir_files(path), max_record_bytes, progress)
    elif c == "text":
        rows = (_document_rows([path], max_record_bytes, progress) if fmt.shape == "document"
                else _paragraph_rows(path, max_record_bytes, progress))
    else:
        raise DatasetError(f"unknown file format {c!r}; expected one of {', '.join(CONTAINERS)}")
    return _read_errors_as_dataset_errors(rows, path)


def _read_errors_as_dataset_errors(rows: Iterator[Row], path: Path) -> Iterator[Row]:
    """A file that cannot be read (permissions, a FIFO swapped in, an I/O error) is a DatasetError."""
    try:
        yield from rows
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from None


def detect_format(path: str | Path, format: str | None = None,
                  column_map: Mapping[str, str] | None = None) -> DatasetFormat:
    """Container from the extension/content, shape from the first records' keys (or from ``format``)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(f"dataset not found: {path}")
    if not path.is_dir() and not stat.S_ISREG(os.stat(path).st_mode):
        raise DatasetError(f"{path} is not a regular file (a FIFO, socket or device); give a dataset file")
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
                seen_keys = [shown(k) for k in list(mapped)[:20]]
        if n_rows >= DETECT_ROWS:
            break
    if n_rows == 0 and seen_keys is None:
        # Nothing parsed: either nothing at all, or only bad lines (those are reported by the loader).
        return DatasetFormat(container, "chat")
    what = f"the first records have keys: {', '.join(seen_keys)}" if seen_keys else "the records are not objects"
    hint = " (map columns with --column FIELD=COLUMN)" if container in ("csv", "tsv") else ""
    raise DatasetError(f"cannot detect the record format of {path}: {what}; expected {EXPECTED_SHAPES}{hint}")
