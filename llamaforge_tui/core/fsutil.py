"""Small filesystem helpers: atomic writes (temporary file in the same folder, fsync, rename), bounded reads
of regular files only, JSON with explicit limits, and text that is always safe to print.

Files come from outside (Ollama stores, datasets, caches): a FIFO blocks ``open()`` for ever, ``/dev/zero``
never ends, a 10 GB "manifest" exhausts memory, and JSON nested 100,000 deep or holding a 5,000-digit number
raises exceptions that are not ``JSONDecodeError``. These helpers turn each case into an ``OSError`` or a
``ValueError`` with a clear message, which callers already map to their own errors.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import json
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO

MAX_JSON_DEPTH = 64  # real manifests, params and dataset records nest a few levels; deeper is hostile


@contextlib.contextmanager
def atomic_open(path: Path | str, mode: str = "wb") -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path``; on success it is fsynced and renamed over ``path``.

    On any exception (or KeyboardInterrupt) the temporary file is removed and ``path`` is untouched,
    so an interrupted write never leaves a half-written file at the final path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh  # type: ignore[misc]
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def human_bytes(n: int | float | None, *, binary: bool = False, unknown: str = "N/A") -> str:
    """1536 -> '1.54 kB' (decimal units, as Ollama and the HF hub show sizes); with ``binary``, '1.5 KiB'
    (the units RAM and VRAM are sold in, used for memory estimates)."""
    if n is None:
        return unknown
    if isinstance(n, int) and abs(n) >= 10**300:  # too big for a float: scale exactly, show an exponent
        scaled = Decimal(n) / Decimal(1024 if binary else 1000) ** 4
        return f"{scaled:.2e} {'TiB' if binary else 'TB'}"
    n = float(n)
    base, units, digits = (1024, ("B", "KiB", "MiB", "GiB", "TiB"), 1) if binary else (1000, ("B", "kB", "MB", "GB", "TB"), 2)
    for unit in units:
        if abs(n) < base or unit == units[-1]:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.{digits}f} {unit}"
        n /= base
    raise AssertionError("unreachable")  # pragma: no cover


# ---------------------------------------------------------------------------------------------- bounded reads

class NotRegularFile(OSError):
    """A FIFO, socket, device or folder where a regular file was expected (``strerror`` says which)."""


class FileTooLarge(OSError):
    """A file larger than the caller's limit (``strerror`` gives the limit)."""


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def open_regular(path: Path | str) -> BinaryIO:
    """Open ``path`` for reading only if it is a regular file (symlinks followed).

    The open itself is non-blocking, so a FIFO with no writer cannot hang the caller; the type is checked
    on the open descriptor (no race with a swap between check and open).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
            code = errno.EISDIR if stat.S_ISDIR(mode) else errno.EINVAL
            raise NotRegularFile(code, f"{kind}, not a regular file", str(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: Path | str, max_bytes: int) -> bytes:
    """The whole of a regular file of at most ``max_bytes``; never reads more than ``max_bytes + 1``."""
    chunks: list[bytes] = []
    size = 0
    with open_regular(path) as fh:
        # In chunks: read(n) allocates n bytes up front, so one read of a 1 GB limit would cost 1 GB on any file.
        while size <= max_bytes:
            chunk = fh.read(min(1 << 20, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    if size > max_bytes:
        raise FileTooLarge(errno.EFBIG, f"larger than the limit of {max_bytes:,} bytes", str(path))
    return b"".join(chunks)


# ---------------------------------------------------------------------------------------------- JSON

class JsonLimitError(ValueError):
    """JSON that parses in principle but past a limit: nesting depth, or a number too long to convert."""


_OUTSIDE_BRACKETS = re.compile(r'"[^"]*"|[^\[\]{}"]+')
_OUTSIDE_BRACKETS_B = re.compile(rb'"[^"]*"|[^\[\]{}"]+')


def json_depth_ok(text: str | bytes, max_depth: int = MAX_JSON_DEPTH) -> bool:
    """Whether JSON ``text`` nests at most ``max_depth`` containers deep, decided before parsing it (so a
    hostile nest never reaches the parser's recursion).

    Escapes, strings and everything but brackets are cut out with C-speed string operations; the depth is
    then the running sum of opens and closes (numpy): linear time, about what ``json.loads`` itself costs.
    Malformed text may be misjudged either way; the parser reports it.
    """
    if isinstance(text, bytes):
        empty, backslash, quote, outside = b"", b"\\", b'"', _OUTSIDE_BRACKETS_B
    else:
        empty, backslash, quote, outside = "", "\\", '"', _OUTSIDE_BRACKETS
    unescaped = text.replace(backslash + backslash, empty).replace(backslash + quote, empty)
    brackets = outside.sub(empty, unescaped)
    if len(brackets) <= max_depth:
        return True
    import numpy as np  # only for big documents; fsutil stays cheap to import

    raw = np.frombuffer(brackets.encode("ascii") if isinstance(brackets, str) else brackets, dtype=np.uint8)
    steps = ((raw == 91) | (raw == 123)).astype(np.int32) - ((raw == 93) | (raw == 125)).astype(np.int32)
    return int(np.cumsum(steps).max()) <= max_depth


def loads_json(text: str | bytes, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` with explicit limits. Raises ``json.JSONDecodeError`` for malformed JSON and
    ``JsonLimitError`` (both ``ValueError``) for nesting past ``max_depth`` or a number past Python's
    4,300-digit conversion limit, instead of ``RecursionError`` or a bare ``ValueError``."""
    if not json_depth_ok(text, max_depth):
        raise JsonLimitError(f"JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError:  # pragma: no cover - json_depth_ok() refuses such text first
        raise JsonLimitError(f"JSON nested deeper than {max_depth} levels") from None
    except ValueError as exc:  # int() past sys.get_int_max_str_digits()
        raise JsonLimitError(f"a number in the JSON is too long ({exc})") from None


# ---------------------------------------------------------------------------------------------- safe text

def _escape_unencodable(exc: UnicodeError) -> tuple[str, int]:
    """Error handler: a byte kept as a surrogate by surrogateescape becomes ``\\xNN``; any other character
    the stream cannot encode becomes ``\\uXXXX`` (or ``\\UXXXXXXXX``)."""
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    out = []
    for ch in exc.object[exc.start:exc.end]:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out), exc.end


SAFE_ERRORS = "llamaforge-escape"
codecs.register_error(SAFE_ERRORS, _escape_unencodable)


def safe_text(text: str) -> str:
    """``text`` if it is valid Unicode; otherwise the same with undecodable bytes (lone surrogates from
    ``surrogateescape``, e.g. in a file name) written as ``\\xNN``, so it encodes as UTF-8 anywhere."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", SAFE_ERRORS).decode("utf-8")


def safe_json_value(value: Any) -> Any:
    """A copy of a JSON-able value whose every string (keys too) is ``safe_text`` (iterative)."""
    if isinstance(value, str):
        return safe_text(value)
    if not isinstance(value, (dict, list, tuple)):
        return value
    root: list[Any] = [None]
    stack: list[tuple[Any, Any, Any]] = [(value, root, 0)]
    while stack:
        item, parent, key = stack.pop()
        if isinstance(item, dict):
            new: Any = {}
            for k, v in item.items():
                new[safe_text(k) if isinstance(k, str) else k] = None
                stack.append((v, new, safe_text(k) if isinstance(k, str) else k))
        elif isinstance(item, (list, tuple)):
            new = [None] * len(item)
            stack.extend((v, new, i) for i, v in enumerate(item))
        elif isinstance(item, str):
            new = safe_text(item)
        else:
            new = item
        parent[key] = new
    return root[0]
