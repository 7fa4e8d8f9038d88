"""Small filesystem helpers: atomic writes (temporary file in the same folder, fsync, rename)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


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
    n = float(n)
    base, units, digits = (1024, ("B", "KiB", "MiB", "GiB", "TiB"), 1) if binary else (1000, ("B", "kB", "MB", "GB", "TB"), 2)
    for unit in units:
        if abs(n) < base or unit == units[-1]:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.{digits}f} {unit}"
        n /= base
    raise AssertionError("unreachable")  # pragma: no cover
