"""What deleting an Ollama model frees: the blobs no other manifest uses. Read-only; the server does the deleting.

Every manifest file under the store's roots counts, in both layouts (``manifests`` and ``manifests-v2``), and a
manifest list's children too, so a blob that any other model (or the same model's copy in the other layout)
still needs is reported as kept, never as freed. Sizes are the blob files' sizes on disk.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llamaforge_tui.core.errors import StoreError
from llamaforge_tui.core.fsutil import human_bytes
from llamaforge_tui.core.ollama.manifest import (ManifestError, blob_path, is_manifest_list, parse_json,
                                                 parse_manifest, parse_manifest_list, read_manifest_bytes)
from llamaforge_tui.core.ollama.model import OllamaModel

log = logging.getLogger(__name__)

LAYOUTS = ("manifests", "manifests-v2")


@dataclass(frozen=True)
class BlobUse:
    digest: str
    size_bytes: int  # on disk; 0 when the blob file is missing
    used_by: tuple[str, ...] = ()  # manifests (relative paths) that keep it


@dataclass
class DeletePlan:
    model: str
    freed: list[BlobUse] = field(default_factory=list)
    kept: list[BlobUse] = field(default_factory=list)
    flagged: list[str] = field(default_factory=list)  # "run X was trained from it", filled by the caller

    @property
    def freed_bytes(self) -> int:
        return sum(b.size_bytes for b in self.freed)

    @property
    def kept_bytes(self) -> int:
        return sum(b.size_bytes for b in self.kept)

    def freed_line(self) -> str:
        return f"frees {human_bytes(self.freed_bytes)} ({len(self.freed)} blob(s) no other model uses)"

    def kept_lines(self) -> list[str]:
        lines = []
        for blob in self.kept:
            users = ", ".join(blob.used_by[:3]) + (" …" if len(blob.used_by) > 3 else "")
            lines.append(f"keeps {blob.digest[:19]} ({human_bytes(blob.size_bytes)}): shared with {users}")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "freed_bytes": self.freed_bytes, "kept_bytes": self.kept_bytes,
                "freed": [{"digest": b.digest, "size_bytes": b.size_bytes} for b in self.freed],
                "kept": [{"digest": b.digest, "size_bytes": b.size_bytes, "used_by": list(b.used_by)}
                         for b in self.kept],
                "flagged": list(self.flagged)}


def manifest_digests(path: Path, root: Path) -> set[str]:
    """Every blob a manifest file needs: config, layers, a list's child manifests and their blobs, and the
    blob a ``manifests-v2`` entry links to. Raises ``ManifestError`` for an unreadable manifest."""
    digests: set[str] = set()
    if path.is_symlink():
        target = Path(os.readlink(path))
        if target.parent.name == "blobs" and target.name.startswith("sha256-"):
            digests.add(target.name.replace("-", ":", 1))
    docs = [parse_json(read_manifest_bytes(path), path)]
    if is_manifest_list(docs[0]):
        children = []
        for entry in parse_manifest_list(docs[0], root, path):
            digests.add(entry.digest)
            if entry.path.is_file():
                children.append(parse_json(read_manifest_bytes(entry.path), entry.path))
        docs = children
    for doc in docs:
        manifest = parse_manifest(doc, root, path)
        if manifest.config is not None:
            digests.add(manifest.config.digest)
        digests.update(layer.digest for layer in manifest.layers)
    return digests


def _manifest_files(roots: Iterable[Path]) -> list[tuple[Path, Path]]:
    found = []
    for root in roots:
        for layout in LAYOUTS:
            base = root / layout
            if base.is_dir():
                found += [(root, p) for p in sorted(base.rglob("*")) if p.is_file() or p.is_symlink()]
    return found


def _size(root: Path, digest: str) -> int:
    try:
        return blob_path(root, digest).stat().st_size
    except (OSError, ManifestError):
        return 0


def plan_delete(model: OllamaModel, roots: Iterable[Path]) -> DeletePlan:
    """The blobs deleting ``model`` frees, and the ones other manifests keep (with who keeps them)."""
    own_path = model.manifest_path
    try:
        own = manifest_digests(own_path, model.root)
    except ManifestError as exc:
        raise StoreError(f"cannot plan deleting {model.full_name}: {exc}") from exc
    users: dict[str, list[str]] = {}
    for root, path in _manifest_files(roots):
        if path == own_path:
            continue
        try:
            digests = manifest_digests(path, root)
        except ManifestError as exc:  # a broken manifest elsewhere must not block the plan; it keeps nothing
            log.debug("skipping unreadable manifest %s: %s", path, exc)
            continue
        name = str(path.relative_to(root))
        for digest in digests & own:
            users.setdefault(digest, []).append(name)
    plan = DeletePlan(model.full_name)
    for digest in sorted(own):
        use = BlobUse(digest, _size(model.root, digest), tuple(users.get(digest, ())))
        (plan.kept if use.used_by else plan.freed).append(use)
    return plan
