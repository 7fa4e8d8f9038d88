"""What the Hugging Face hub cache holds: per-repo status, a full scan, and deletions.

Everything goes through ``huggingface_hub`` (``scan_cache_dir`` and its ``DeleteCacheStrategy``); this
module never writes into the cache itself. Reads are tolerant: a repo that ``scan_cache_dir`` rejects
(dangling symlink, missing snapshots folder, unreadable folder) is still listed, marked ``corrupt`` with
the reason, so the user sees what is wrong instead of a crash or a silently missing row.
The cache folder is resolved at call time (see ``hf_cache_layout.resolve_cache_dir``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from llamaforge_tui.core.hub.layout import (
    SAFETENSORS_INDEX,
    TYPE_FROM_PREFIX,
    CacheError,
    Completeness,
    blobs_size,
    cache_dir_from_settings,
    check_snapshot,
    mtime,
    parse_repo_ref,
    read_refs,
    repo_folder,
    resolve_cache_dir,
)

if TYPE_CHECKING:
    from llamaforge_tui.core.hub.download import DownloadProgress

__all__ = [
    "SAFETENSORS_INDEX", "CacheError", "CacheScan", "CacheState", "Completeness", "DeletionPlan", "RepoCacheStatus",
    "RepoEntry", "RevisionEntry", "cache_dir_from_settings", "check_snapshot", "delete_revisions", "download_repo",
    "parse_repo_ref", "plan_deletion", "repo_cache_status", "repo_folder", "resolve_cache_dir", "scan_cache",
]

log = logging.getLogger(__name__)

CacheState = Literal["cached", "partial", "missing"]


# --------------------------------------------------------------------------------------------------
# One repo, fast (used by the Models pane for every Ollama model)


@dataclass(frozen=True)
class RepoCacheStatus:
    """``cached``: a complete model snapshot is present; ``partial``: something is there but not enough;
    ``missing``: nothing. ``revision`` is the commit looked at (``refs/main`` first)."""

    state: CacheState
    size_bytes: int
    revision: str | None
    missing: tuple[str, ...] = ()
    snapshot_path: Path | None = None


def repo_cache_status(repo_id: str, cache_dir: str | Path | None = None, *, revision: str | None = None) -> RepoCacheStatus:
    """Is ``repo_id`` in the cache, and complete enough to train from?

    Looks only at that repo's folder (no full scan), so it is cheap enough to call per Ollama model.
    With ``revision`` (a ref or a commit), that revision is judged; otherwise ``refs/main`` if present,
    else any complete snapshot, else the newest one.
    """
    path = repo_folder(repo_id, "model", cache_dir)
    snapshots_dir = path / "snapshots"
    try:
        snapshots = sorted((p for p in snapshots_dir.iterdir() if p.is_dir()), key=mtime, reverse=True)
    except OSError:
        snapshots = []
    if not snapshots:
        return RepoCacheStatus("missing", blobs_size(path) if path.exists() else 0, None)
    refs = read_refs(path)
    size = blobs_size(path)
    by_name = {p.name: p for p in snapshots}
    if revision is not None:
        commit = refs.get(revision, revision)
        chosen = by_name.get(commit) or next((p for p in snapshots if p.name.startswith(commit)), None)
        if chosen is None:
            return RepoCacheStatus("missing", size, None)
        candidates = [chosen]
    else:
        main = by_name.get(refs.get("main", ""))
        candidates = ([main] if main else []) + [p for p in snapshots if p is not main]
    first_check: tuple[Path, Completeness] | None = None
    for snap in candidates:
        check = check_snapshot(snap)
        if check.complete:
            return RepoCacheStatus("cached", size, snap.name, (), snap)
        first_check = first_check or (snap, check)
    assert first_check is not None
    snap, check = first_check
    return RepoCacheStatus("partial", size, snap.name, check.missing, snap)


# --------------------------------------------------------------------------------------------------
# The whole cache


@dataclass(frozen=True)
class RevisionEntry:
    """One ``snapshots/<commit>`` folder. ``complete`` is ``None`` for non-model repos."""

    commit: str
    refs: tuple[str, ...]
    size_bytes: int
    files: tuple[str, ...]
    last_modified: float
    snapshot_path: Path
    complete: bool | None
    missing: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"commit": self.commit, "refs": list(self.refs), "size_bytes": self.size_bytes,
                "complete": self.complete, "files": list(self.files), "missing": list(self.missing)}


@dataclass(frozen=True)
class RepoEntry:
    """One cached repo. ``corrupt`` holds the reason when ``scan_cache_dir`` rejected it; such a repo is
    listed from a tolerant read of its folder and cannot be deleted through huggingface_hub's strategy."""

    repo_id: str
    repo_type: str
    repo_path: Path
    size_bytes: int
    nb_files: int
    revisions: tuple[RevisionEntry, ...]
    last_accessed: float
    last_modified: float
    corrupt: str | None = None

    @property
    def complete(self) -> bool | None:
        """A model repo is complete when one of its revisions is; ``None`` for datasets and spaces."""
        if self.repo_type != "model":
            return None
        return any(r.complete for r in self.revisions)

    @property
    def refs(self) -> tuple[str, ...]:
        return tuple(sorted(ref for r in self.revisions for ref in r.refs))

    def revision(self, rev: str) -> RevisionEntry:
        """Find a revision by ref name, full commit, or unique commit prefix (7+ characters)."""
        for r in self.revisions:
            if rev in r.refs or r.commit == rev:
                return r
        matches = [r for r in self.revisions if len(rev) >= 7 and r.commit.startswith(rev)]
        if len(matches) == 1:
            return matches[0]
        known = ", ".join(f"{r.commit[:12]}{' (' + ','.join(r.refs) + ')' if r.refs else ''}" for r in self.revisions)
        why = "is ambiguous" if matches else "is not cached"
        raise CacheError(f"revision {rev!r} of {self.repo_id} {why}; cached revisions: {known or 'none'}")

    def to_dict(self, used_by: Sequence[str] = ()) -> dict[str, Any]:
        return {
            "repo_id": self.repo_id, "repo_type": self.repo_type, "size_bytes": self.size_bytes,
            "complete": self.complete, "nb_files": self.nb_files, "last_accessed": self.last_accessed,
            "last_modified": self.last_modified, "corrupt": self.corrupt, "repo_path": str(self.repo_path),
            "revisions": [r.to_dict() for r in sorted(self.revisions, key=lambda r: -r.last_modified)],
            "used_by": list(used_by),
        }


@dataclass
class CacheScan:
    """A snapshot of the cache. ``info`` is huggingface_hub's own ``HFCacheInfo`` (needed to delete)."""

    cache_dir: Path
    repos: list[RepoEntry]
    total_size_bytes: int
    warnings: list[str] = field(default_factory=list)
    incomplete_files: list[tuple[Path, int]] = field(default_factory=list)
    info: Any = None  # huggingface_hub.HFCacheInfo | None (None when the folder does not exist)
    # LlamaForge's own cache of dequantized GGUF weights (not part of the HF cache, but disk the user pays for);
    # filled in by ``core.model.dequant_cache.scan_cache_with_dequantized``, which knows that cache.
    dequantized_cache_bytes: int = 0

    @property
    def corrupt_count(self) -> int:
        return sum(1 for r in self.repos if r.corrupt)

    def find(self, repo_id: str, repo_type: str | None = None) -> RepoEntry:
        for repo in self.repos:
            if repo.repo_id == repo_id and (repo_type is None or repo.repo_type == repo_type):
                return repo
        raise CacheError(f"{repo_id} is not in the Hugging Face cache ({self.cache_dir})")

    def to_dict(self, used_by: dict[str, list[str]] | None = None) -> dict[str, Any]:
        used_by = used_by or {}
        return {
            "cache_dir": str(self.cache_dir),
            "total_size_bytes": self.total_size_bytes,
            "corrupt_repos": self.corrupt_count,
            "dequantized_cache_bytes": self.dequantized_cache_bytes,
            "warnings": list(self.warnings),
            "incomplete_downloads": [{"path": str(p), "size_bytes": s} for p, s in self.incomplete_files],
            "repos": [r.to_dict(used_by.get(r.repo_id, []) if r.repo_type == "model" else [])
                      for r in self.repos],
        }


def _entry_from_info(repo: Any) -> RepoEntry:
    """Convert huggingface_hub's ``CachedRepoInfo`` (frozensets, no completeness) into our entry."""
    revisions = []
    for rev in repo.revisions:
        files = tuple(sorted(f.file_path.relative_to(rev.snapshot_path).as_posix() for f in rev.files))
        check = check_snapshot(rev.snapshot_path) if repo.repo_type == "model" else None
        revisions.append(RevisionEntry(
            commit=rev.commit_hash, refs=tuple(sorted(rev.refs)), size_bytes=rev.size_on_disk, files=files,
            last_modified=rev.last_modified, snapshot_path=rev.snapshot_path,
            complete=check.complete if check else None, missing=check.missing if check else (),
        ))
    revisions.sort(key=lambda r: -r.last_modified)
    return RepoEntry(repo.repo_id, repo.repo_type, repo.repo_path, repo.size_on_disk, repo.nb_files,
                     tuple(revisions), repo.last_accessed, repo.last_modified)


def _tolerant_entry(repo_path: Path, reason: str) -> RepoEntry | None:
    """List a repo that ``scan_cache_dir`` rejected, reading what can be read and never raising."""
    prefix, sep, rest = repo_path.name.partition("--")
    if not sep or prefix not in TYPE_FROM_PREFIX:
        return None
    repo_type = TYPE_FROM_PREFIX[prefix]
    refs = read_refs(repo_path)
    revisions = []
    try:
        snapshots = [p for p in (repo_path / "snapshots").iterdir() if p.is_dir()]
    except OSError:
        snapshots = []
    for snap in snapshots:
        try:
            files = tuple(sorted(p.relative_to(snap).as_posix() for p in snap.glob("**/*") if not p.is_dir()))
        except OSError:
            files = ()
        check = check_snapshot(snap) if repo_type == "model" else None
        revisions.append(RevisionEntry(
            commit=snap.name, refs=tuple(sorted(r for r, c in refs.items() if c == snap.name)), size_bytes=0,
            files=files, last_modified=mtime(snap), snapshot_path=snap,
            complete=check.complete if check else None, missing=check.missing if check else (),
        ))
    stamp = mtime(repo_path)
    return RepoEntry(rest.replace("--", "/"), repo_type, repo_path, blobs_size(repo_path), 0,
                     tuple(revisions), stamp, stamp, corrupt=reason)


def _corrupt_repo_path(cache_dir: Path, message: str) -> Path | None:
    """The top-level repo folder a ``CorruptedCacheException`` message talks about, if any."""
    resolved = cache_dir.resolve()
    for token in message.replace("(", " ").replace(")", " ").replace(":", " ").split():
        candidate = Path(token.rstrip(".,"))
        if not candidate.is_absolute():
            continue
        try:
            rel = candidate.relative_to(resolved)
        except ValueError:
            continue
        if rel.parts:
            return resolved / rel.parts[0]
    return None


def _scan_per_repo(cache_dir: Path) -> Any:
    """Fallback when ``scan_cache_dir`` itself fails (an unreadable folder raises ``OSError`` there):
    scan repo by repo with huggingface_hub's scanner so one bad folder cannot hide the others."""
    from huggingface_hub import HFCacheInfo
    from huggingface_hub.errors import CorruptedCacheException
    from huggingface_hub.utils import _cache_manager

    repos, warnings = set(), []
    for repo_path in sorted(cache_dir.iterdir()):
        if repo_path.name.startswith(".") or repo_path.name == "CACHEDIR.TAG":
            continue
        try:
            repos.add(_cache_manager._scan_cached_repo(repo_path))
        except CorruptedCacheException as exc:
            warnings.append(exc)
        except OSError as exc:
            warnings.append(CorruptedCacheException(f"Cannot read {repo_path}: {exc.strerror or exc}"))
    total = sum(r.size_on_disk for r in repos)
    return HFCacheInfo(size_on_disk=total, repos=frozenset(repos), incomplete_files=frozenset(),
                       warnings=warnings, cache_dir=cache_dir.resolve())


def scan_cache(cache_dir: str | Path | None = None) -> CacheScan:
    """Scan the whole cache with ``huggingface_hub.scan_cache_dir``; corrupt repos are kept as rows.

    Never raises for a damaged cache: the warnings ``scan_cache_dir`` collects are returned as text.
    A missing cache folder is an empty scan (nothing downloaded yet is not an error).
    """
    from huggingface_hub import scan_cache_dir

    folder = resolve_cache_dir(cache_dir)
    if not folder.exists():
        return CacheScan(folder, [], 0)
    if not folder.is_dir():
        raise CacheError(f"the Hugging Face cache path {folder} is a file, not a folder")
    try:
        info = scan_cache_dir(folder)
    except OSError as exc:
        log.warning("scan_cache_dir failed (%s); scanning repo by repo", exc)
        info = _scan_per_repo(folder)
    repos = [_entry_from_info(r) for r in info.repos]
    warnings = [str(w) for w in info.warnings]
    seen = {r.repo_path.resolve() for r in repos}
    for warning in info.warnings:
        path = _corrupt_repo_path(folder, str(warning))
        if path is None or path in seen:
            continue
        seen.add(path)
        entry = _tolerant_entry(path, str(warning))
        if entry is not None:
            repos.append(entry)
    incomplete = sorted((f.file_path, f.size_on_disk) for f in getattr(info, "incomplete_files", ()))
    repos.sort(key=lambda r: (-r.size_bytes, r.repo_id))
    # What the cache holds on disk: every row, corrupt ones included (huggingface_hub's own total leaves out
    # the repos it rejected, so the rows would not add up to it).
    total = sum(r.size_bytes for r in repos)
    return CacheScan(folder, repos, total, warnings, incomplete, info)


# --------------------------------------------------------------------------------------------------
# Deleting (through huggingface_hub's DeleteCacheStrategy only)


@dataclass(frozen=True)
class DeletionPlan:
    """What a deletion will do, computed before anything is touched, so the UI can ask first."""

    repo_id: str
    repo_type: str
    commits: tuple[str, ...]
    whole_repo: bool
    freed_bytes: int
    strategy: Any  # huggingface_hub.DeleteCacheStrategy

    def describe(self) -> str:
        what = "the whole repo" if self.whole_repo else ", ".join(c[:12] for c in self.commits)
        return f"{self.repo_id}: {what}"


def plan_deletion(scan: CacheScan, repo_id: str, revisions: Sequence[str] | None = None, *,
                  repo_type: str | None = None) -> DeletionPlan:
    """Plan deleting ``revisions`` (refs, commits or 7+ char prefixes) of ``repo_id``, or the whole repo.

    ``freed_bytes`` is huggingface_hub's own estimate: blobs still used by a kept revision are not freed.
    """
    repo = scan.find(repo_id, repo_type)
    if repo.corrupt:
        raise CacheError(f"{repo_id} is damaged ({repo.corrupt}); huggingface_hub cannot plan its deletion. "
                         f"Inspect or remove {repo.repo_path} yourself, or re-download it")
    if scan.info is None:
        raise CacheError(f"nothing to delete: {scan.cache_dir} does not exist")
    if revisions:
        commits = tuple(dict.fromkeys(repo.revision(rev).commit for rev in revisions))
    else:
        commits = tuple(r.commit for r in repo.revisions)
    if not commits:
        raise CacheError(f"{repo_id} has no cached revision to delete")
    strategy = scan.info.delete_revisions(*commits)
    whole = set(commits) == {r.commit for r in repo.revisions}
    return DeletionPlan(repo.repo_id, repo.repo_type, commits, whole, int(strategy.expected_freed_size), strategy)


def delete_revisions(plan: DeletionPlan) -> int:
    """Execute a plan with huggingface_hub's strategy; returns the bytes freed (its estimate)."""
    try:
        plan.strategy.execute()
    except OSError as exc:
        raise CacheError(f"cannot delete {plan.describe()}: {exc.strerror or exc}") from exc
    log.info("deleted %s (%d bytes)", plan.describe(), plan.freed_bytes)
    return plan.freed_bytes


def download_repo(repo_id: str, revision: str | None = None, cache_dir: str | Path | None = None, *,
                  progress: Callable[[DownloadProgress], None] | None = None,
                  cancel: threading.Event | None = None) -> Path:
    """Fetch what training needs from a repo into the cache; see ``hf_download.download_repo``."""
    from llamaforge_tui.core.hub.download import download_repo as _download

    return _download(repo_id, revision, cache_dir, progress=progress, cancel=cancel)
