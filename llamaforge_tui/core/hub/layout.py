"""Where the Hugging Face hub cache lives and how one snapshot folder is judged; no scanning here.

``huggingface_hub.constants`` freezes ``HF_HUB_CACHE`` at import time, so the cache folder is resolved
from the environment at call time (``resolve_cache_dir``): tests and users who change ``HF_HOME`` after
start-up still get the right folder. Everything here only reads.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamaforge_tui.core.errors import LlamaForgeError

_REPO_TYPE_PREFIX = {"model": "models", "dataset": "datasets", "space": "spaces"}
TYPE_FROM_PREFIX = {v: k for k, v in _REPO_TYPE_PREFIX.items()}
# Any one of these makes a tokenizer usable (fast tokenizer, sentencepiece, or BPE vocab + merges).
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
_BPE_FILES = ("vocab.json", "merges.txt")
SAFETENSORS_INDEX = "model.safetensors.index.json"


class CacheError(LlamaForgeError):
    """The HF cache cannot be read, or a cache operation was asked for something that is not there."""


def resolve_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """The hub cache folder: the explicit one, else ``HF_HUB_CACHE``, else ``$HF_HOME/hub``, else the default.

    Resolved from ``os.environ`` on every call (``huggingface_hub.constants`` is frozen at import).
    """
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ
    if value := env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.path.expandvars(value)).expanduser()
    if value := env.get("HF_HOME"):
        return Path(os.path.expandvars(value)).expanduser() / "hub"
    xdg = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def cache_dir_from_settings(settings: Any) -> Path:
    """``settings.hf_cache_dir`` (the ``--cache-dir`` option) or the environment's cache folder."""
    return resolve_cache_dir(getattr(settings, "hf_cache_dir", "") or None)


def repo_folder(repo_id: str, repo_type: str = "model", cache_dir: str | Path | None = None) -> Path:
    """``<cache>/models--org--name``: the folder huggingface_hub uses for a repo."""
    prefix = _REPO_TYPE_PREFIX.get(repo_type)
    if prefix is None:
        raise CacheError(f"unknown repo type {repo_type!r}; expected one of {', '.join(_REPO_TYPE_PREFIX)}")
    return resolve_cache_dir(cache_dir) / f"{prefix}--{repo_id.replace('/', '--')}"


def parse_repo_ref(text: str) -> tuple[str, str | None]:
    """``"org/name@rev"`` -> ``("org/name", "rev")``; ``"hf:org/name"`` is accepted too."""
    text = text.strip()
    if text.startswith("hf:"):
        text = text[3:]
    repo_id, _, revision = text.partition("@")
    parts = repo_id.split("/")
    if len(parts) > 2 or not all(parts) or any(p in (".", "..") or " " in p for p in parts):
        raise CacheError(f"not a Hugging Face repo id: {text!r} (expected ORG/NAME or ORG/NAME@REVISION)")
    return repo_id, (revision or None)


# --------------------------------------------------------------------------------------------------
# Completeness of one snapshot folder


@dataclass(frozen=True)
class Completeness:
    """Whether a snapshot can be trained from: config, tokenizer and every safetensors shard present."""

    complete: bool
    missing: tuple[str, ...] = ()


def _present(snapshot: Path, name: str) -> bool:
    """A file counts when it resolves to a real blob (a dangling symlink does not)."""
    path = snapshot / name
    try:
        return path.is_file()
    except OSError:
        return False


def check_snapshot(snapshot: Path) -> Completeness:
    """Check a ``snapshots/<commit>`` folder for what training needs."""
    missing: list[str] = []
    if not _present(snapshot, "config.json"):
        missing.append("config.json")
    has_tokenizer = any(_present(snapshot, n) for n in _TOKENIZER_FILES) or all(
        _present(snapshot, n) for n in _BPE_FILES
    )
    if not has_tokenizer:
        missing.append("tokenizer (tokenizer.json, tokenizer.model or vocab.json+merges.txt)")
    if _present(snapshot, SAFETENSORS_INDEX):
        try:
            index = json.loads((snapshot / SAFETENSORS_INDEX).read_text(encoding="utf-8"))
            shards = sorted(set(index.get("weight_map", {}).values()))
        except (OSError, ValueError, AttributeError) as exc:
            missing.append(f"{SAFETENSORS_INDEX} (unreadable: {exc})")
        else:
            if not shards:
                missing.append(f"shards ({SAFETENSORS_INDEX} lists none)")
            missing.extend(s for s in shards if not _present(snapshot, s))
    elif not _present(snapshot, "model.safetensors"):
        missing.append("model.safetensors")
    return Completeness(not missing, tuple(_label(snapshot, m) for m in missing))


def _label(snapshot: Path, name: str) -> str:
    """Say so when a missing file is a dangling symlink (its blob was removed behind the cache's back)."""
    return f"{name} (broken link)" if (snapshot / name).is_symlink() else name


def read_refs(repo_path: Path) -> dict[str, str]:
    """``{ref name: commit}`` from ``refs/``; unreadable refs are skipped."""
    refs: dict[str, str] = {}
    refs_dir = repo_path / "refs"
    try:
        entries = [p for p in refs_dir.glob("**/*") if p.is_file()]
    except OSError:
        return refs
    for path in entries:
        try:
            refs[path.relative_to(refs_dir).as_posix()] = path.read_text(encoding="utf-8").strip()
        except OSError:
            continue
    return refs


def blobs_size(repo_path: Path) -> int:
    """Bytes in ``blobs/`` (complete blobs only; ``.incomplete`` partial downloads are not counted)."""
    total = 0
    try:
        for entry in os.scandir(repo_path / "blobs"):
            if entry.name.endswith(".incomplete"):
                continue
            try:
                total += entry.stat(follow_symlinks=True).st_size
            except OSError:
                continue
    except OSError:
        return 0
    return total


def mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
