"""Ollama manifest parsing: digests, layers by media type, manifest lists.

Kept apart from the store walk (``ollama.py``) because it is pure: bytes in, a parsed manifest or a
``ManifestError`` out. A manifest comes from disk that other programs (or other people) wrote, so every
field is checked before it is trusted; above all a digest must look like ``sha256:<64 hex>`` before it
is turned into a path, so a hostile manifest cannot point outside ``blobs/``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamaforge_tui.core.errors import StoreError
from llamaforge_tui.core.fsutil import loads_json, read_regular

IMAGE_PREFIX = "application/vnd.ollama.image."
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_LIST = "application/vnd.ollama.manifest.list.v2+json"
# Older models call the template layer "prompt"; it means the same thing.
_KIND_ALIASES = {"prompt": "template"}
KNOWN_KINDS = frozenset({
    "model", "adapter", "projector", "template", "system", "params", "license", "messages",
    "tensor", "json", "draft", "embed",
})
# A manifest larger than this is not a manifest (real ones are a few kB, tensor-layer ones some hundred kB).
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
# Tensor-layer manifests hold one layer per tensor (a few thousand for the biggest models).
MAX_LAYERS = 100_000

_DIGEST_RE = re.compile(r"^sha256[:-][0-9a-fA-F]{64}$")


class ManifestError(StoreError):
    """A manifest is unreadable, not JSON, or not shaped like an Ollama manifest."""


def blob_name(digest: str) -> str:
    """``sha256:<hex>`` -> ``sha256-<hex>``, after checking the digest's shape.

    The regex is anchored and allows only hex, so no ``/``, ``..`` or NUL can reach the filesystem.
    """
    if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
        shown = repr(digest)[:80]
        raise ManifestError(f"invalid blob digest {shown} (expected sha256:<64 hex digits>)")
    return "sha256-" + digest[7:].lower()


def blob_path(root: Path, digest: str) -> Path:
    """Where the blob for ``digest`` lives under an Ollama models root."""
    return root / "blobs" / blob_name(digest)


def layer_kind(media_type: str) -> str:
    """``application/vnd.ollama.image.template`` -> ``template``; anything foreign -> ``other``."""
    if isinstance(media_type, str) and media_type.startswith(IMAGE_PREFIX):
        kind = media_type[len(IMAGE_PREFIX):]
        kind = _KIND_ALIASES.get(kind, kind)
        return kind if kind in KNOWN_KINDS else "other"
    return "other"


@dataclass(frozen=True)
class Layer:
    """One manifest layer. ``path`` is the validated blob path; ``name`` is set for tensor/json layers."""

    kind: str
    media_type: str
    digest: str
    size: int
    path: Path
    name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "media_type": self.media_type, "digest": self.digest, "size": self.size,
                "path": str(self.path), "name": self.name}


@dataclass(frozen=True)
class ListEntry:
    """A child of a manifest list (ollama PR #16590): one manifest per runner/format."""

    digest: str
    path: Path
    runner: str
    format: str


@dataclass(frozen=True)
class Manifest:
    config: Layer | None
    layers: tuple[Layer, ...]


def read_manifest_bytes(path: Path) -> bytes:
    """Read a manifest (or config blob): a regular file only (a FIFO would block for ever), and never more
    than ``MAX_MANIFEST_BYTES`` of it."""
    try:
        return read_regular(path, MAX_MANIFEST_BYTES)
    except FileNotFoundError as exc:
        raise ManifestError(f"manifest {path} points at a missing file") from exc
    except OSError as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc.strerror or exc}") from exc


def parse_json(data: bytes, origin: Path) -> dict[str, Any]:
    try:
        doc = loads_json(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:  # malformed, too deep, a number too long
        raise ManifestError(f"manifest {origin} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ManifestError(f"manifest {origin} is not a JSON object")
    return doc


def is_manifest_list(doc: dict[str, Any]) -> bool:
    return doc.get("mediaType") == MANIFEST_LIST


def parse_manifest_list(doc: dict[str, Any], root: Path, origin: Path) -> list[ListEntry]:
    entries = doc.get("manifests")
    if not isinstance(entries, list) or not entries:
        raise ManifestError(f"manifest list {origin} has no 'manifests' entries")
    if len(entries) > MAX_LAYERS:
        raise ManifestError(f"manifest list {origin} has {len(entries):,} entries (more than {MAX_LAYERS:,})")
    out = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ManifestError(f"manifest list {origin}: entry {i} is not an object")
        digest = entry.get("digest")
        out.append(ListEntry(digest=str(digest), path=blob_path(root, digest),
                             runner=str(entry.get("runner") or ""), format=str(entry.get("format") or "")))
    return out


def pick_list_entry(entries: list[ListEntry]) -> ListEntry:
    """Prefer the GGUF child (what llama.cpp and we can read); else the first one, to report it."""
    for entry in entries:
        if entry.format.lower() == "gguf" or entry.runner.lower() in ("ggml", "llamacpp"):
            return entry
    return entries[0]


def _parse_layer(raw: Any, root: Path, origin: Path, where: str) -> Layer:
    if not isinstance(raw, dict):
        raise ManifestError(f"manifest {origin}: {where} is not an object")
    media_type = raw.get("mediaType")
    if not isinstance(media_type, str):
        raise ManifestError(f"manifest {origin}: {where} has no mediaType")
    digest = raw.get("digest")
    path = blob_path(root, digest)  # validates
    size = raw.get("size", 0)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestError(f"manifest {origin}: {where} has an invalid size {size!r}")
    name = raw.get("name")
    return Layer(kind=layer_kind(media_type), media_type=media_type, digest=digest, size=size, path=path,
                 name=name if isinstance(name, str) else None)


def parse_manifest(doc: dict[str, Any], root: Path, origin: Path) -> Manifest:
    """Check the schema and turn the layers into ``Layer`` objects with validated blob paths."""
    if doc.get("schemaVersion") != 2:
        raise ManifestError(f"manifest {origin}: unsupported schemaVersion {doc.get('schemaVersion')!r}")
    layers_raw = doc.get("layers")
    if not isinstance(layers_raw, list):
        raise ManifestError(f"manifest {origin}: 'layers' is missing or not a list")
    if len(layers_raw) > MAX_LAYERS:
        raise ManifestError(f"manifest {origin} has {len(layers_raw):,} layers (more than {MAX_LAYERS:,})")
    config = None
    if doc.get("config") is not None:
        config = _parse_layer(doc["config"], root, origin, "config")
    layers = tuple(_parse_layer(raw, root, origin, f"layer {i}") for i, raw in enumerate(layers_raw))
    return Manifest(config=config, layers=layers)
