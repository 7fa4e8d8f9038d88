"""Which Hugging Face repo holds the full-precision weights behind an Ollama model?

Sources, and the order they are consulted:
1. ``user``: ``Settings.base_model_overrides`` (``{"mymodel:latest": "Qwen/Qwen2.5-3B"}``; the value
   ``"none"`` means "never map this one"). An explicit choice beats anything inferred, so a wrong mapping
   can always be corrected.
2. ``gguf-metadata``: the GGUF's ``general.base_model.N.repo_url`` (or organization + name).
3. ``table``: ``basemodel_table`` for the Ollama library families, matched on name and tag, and
   checked against the GGUF's architecture.
Anything else is "no mapping": it is never guessed, and training then uses the GGUF itself.
The HF cache status comes from ``hf_cache.repo_cache_status`` (or ``huggingface_hub.scan_cache_dir``).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from llamaforge_tui.core.errors import ConfigError, LlamaForgeError
from llamaforge_tui.core.fsutil import human_bytes
from llamaforge_tui.core.model.basemodel_table import ARCH_OVERRIDES, FAMILIES, VARIANT_WORDS, TableEntry
from llamaforge_tui.core.ollama.model import DEFAULT_NAMESPACE, PUBLIC_HOSTS, OllamaModel, parse_model_name
from llamaforge_tui.core.ollama.store import StoreScan, find_model, scan_store

if TYPE_CHECKING:
    from llamaforge_tui.core.gguf.info import GgufSummary
    from llamaforge_tui.core.settings import Settings

log = logging.getLogger(__name__)

REPO_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SIZE_RE = re.compile(r"^(\d+x)?\d+(\.\d+)?[bm]$")
NO_MAPPING = "none"


@dataclass(frozen=True)
class BaseModelInfo:
    """A mapping (or the reasoned absence of one) plus the HF cache status of the mapped repo."""

    repo: str | None
    source: str | None  # "user" | "gguf-metadata" | "table" | None
    detail: str  # where the mapping came from, or why there is none
    cache_status: str | None = None  # "cached" | "partial" | "missing" | None (no mapping)
    cache_size_bytes: int | None = None
    download_size_bytes: int | None = None  # approximate, from the table
    revision: str | None = None

    @property
    def needs_download(self) -> bool:
        return self.repo is not None and self.cache_status in ("missing", "partial")

    def describe_cache(self) -> str:
        """The one-line status the Models pane shows."""
        if self.repo is None:
            return "no mapping: will train from the GGUF"
        about = f"about {human_bytes(self.download_size_bytes)}" if self.download_size_bytes else "size unknown"
        if self.cache_status == "cached":
            return f"cached ({human_bytes(self.cache_size_bytes)})"
        if self.cache_status == "partial":
            return f"partial ({human_bytes(self.cache_size_bytes)} present; {about})"
        if self.cache_status == "missing":
            return f"needs download ({about})"
        return "cache status unknown"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------------
# HF cache status


def _fallback_status(repo_id: str, cache_dir: str | None) -> tuple[str, int, str | None]:
    """huggingface_hub.scan_cache_dir, for when ``hf_cache`` is unavailable. Complete = config, tokenizer, all shards."""
    import json

    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    if not cache_dir:  # huggingface_hub.constants froze HF_HUB_CACHE/HF_HOME at import; read them now
        env = os.environ
        if value := env.get("HF_HUB_CACHE"):
            cache_dir = value
        elif value := env.get("HF_HOME"):
            cache_dir = str(Path(value) / "hub")
        else:
            cache_dir = str(Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface" / "hub")
    try:
        info = scan_cache_dir(cache_dir)
    except CacheNotFound:
        return "missing", 0, None
    repo = next((r for r in info.repos if r.repo_type == "model" and r.repo_id.lower() == repo_id.lower()), None)
    if repo is None:
        return "missing", 0, None
    revisions = sorted(repo.revisions, key=lambda r: ("main" not in r.refs, -r.last_modified))
    for rev in revisions:
        names = {f.file_name for f in rev.files} | {str(f.file_path.relative_to(rev.snapshot_path)) for f in rev.files}
        shards: set[str] = set()
        index = rev.snapshot_path / "model.safetensors.index.json"
        if index.is_file():
            try:
                shards = set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values())
            except (OSError, ValueError):
                shards = {"<unreadable index>"}
        elif "model.safetensors" in names:
            shards = {"model.safetensors"}
        tokenizer = names & {"tokenizer.json", "tokenizer.model"}
        if "config.json" in names and tokenizer and shards and shards <= names:
            return "cached", repo.size_on_disk, rev.commit_hash
    return "partial", repo.size_on_disk, revisions[0].commit_hash if revisions else None


def repo_status(repo_id: str, cache_dir: str | None = None) -> tuple[str, int, str | None]:
    """(state, size_bytes, revision) for a repo; uses the CACHE module when it is there."""
    try:
        from llamaforge_tui.core.hub.cache import repo_cache_status
    except ImportError:
        return _fallback_status(repo_id, cache_dir)
    status = repo_cache_status(repo_id, cache_dir)
    return status.state, status.size_bytes, status.revision


class CacheStatusLookup:
    """``repo_id -> (state, size, revision)``, memoized for one scan, so 80 models cost one look per repo."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.cache_dir = (settings.hf_cache_dir or None) if settings is not None else None
        self._memo: dict[str, tuple[str | None, int | None, str | None]] = {}
        self._lock = threading.Lock()

    def __call__(self, repo_id: str) -> tuple[str | None, int | None, str | None]:
        with self._lock:
            if repo_id in self._memo:
                return self._memo[repo_id]
        try:
            result: tuple[str | None, int | None, str | None] = repo_status(repo_id, self.cache_dir)
        except OSError as exc:  # an unreadable cache must not hide the model list
            log.warning("cannot read the HF cache status of %s: %s", repo_id, exc)
            result = (None, None, None)
        with self._lock:
            self._memo[repo_id] = result
        return result


# --------------------------------------------------------------------------------------------------
# The three sources


def repo_from_url(url: str) -> str | None:
    """``https://huggingface.co/google/gemma-3-270m[/tree/main]`` -> ``google/gemma-3-270m``; other hosts -> None."""
    try:  # the URL comes from a GGUF: "http://[" or a fullwidth netloc make urllib raise ValueError
        parts = urlsplit(url.strip())
        host = (parts.hostname or "").lower()
    except ValueError:
        return None
    if host not in ("huggingface.co", "www.huggingface.co", "hf.co"):
        return None
    segments = [s for s in parts.path.split("/") if s]
    if len(segments) < 2 or segments[0] in ("datasets", "spaces"):
        return None
    repo = f"{segments[0]}/{segments[1]}"
    return repo if REPO_ID_RE.fullmatch(repo) else None


def _from_metadata(summary: GgufSummary | None) -> tuple[str, str] | None:
    if summary is None:
        return None
    for i, ref in enumerate(summary.base_models):
        if ref.repo_url and (repo := repo_from_url(ref.repo_url)):
            return repo, f"GGUF general.base_model.{i}.repo_url"
        if ref.organization and ref.name:
            repo = f"{ref.organization.strip().replace(' ', '-')}/{ref.name.strip().replace(' ', '-')}"
            if REPO_ID_RE.fullmatch(repo):
                return repo, f"GGUF general.base_model.{i}.organization + name"
    return None


def _override(settings: Settings | None, full_name: str, name: str) -> str | None:
    if settings is None or not settings.base_model_overrides:
        return None
    overrides = {k.lower().removeprefix("ollama:"): v for k, v in settings.base_model_overrides.items()}
    untagged = full_name.rsplit(":", 1)[0]
    for key in (full_name.lower(), untagged.lower(), name.lower()):
        if key in overrides:
            return overrides[key].strip()
    return None


def _parse_tag(family_name: str, tag: str) -> tuple[str | None, str]:
    """``7b-instruct-q4_K_M`` -> ("7b", "instruct"); ``latest`` -> (None, "instruct")."""
    family = FAMILIES[family_name]
    size, variant = None, "instruct"
    for word in tag.lower().split("-"):
        if size is None and (_SIZE_RE.fullmatch(word) or word in family.aliases):
            size = family.aliases.get(word, word)
        elif word in VARIANT_WORDS:
            variant = VARIANT_WORDS[word]
    return size, variant


def _from_table(name: str, tag: str, namespace_is_library: bool,
                summary: GgufSummary | None) -> tuple[TableEntry, str, str] | str:
    """(entry, repo, detail) on a match; otherwise the reason there is none."""
    family_name = name.lower()
    if not namespace_is_library or family_name not in FAMILIES:
        return f"'{name}' is not an Ollama library family in the table"
    family = FAMILIES[family_name]
    size, variant = _parse_tag(family_name, tag)
    how = f"tag '{tag}'"
    if size is None:
        size = family.default_size
        how = f"default size {size} of '{family_name}'"
        if summary is not None and summary.parameter_count:
            real = summary.parameter_count / 1e9
            closest = min(family.entries.values(), key=lambda e: abs(e.params - real) / e.params)
            if abs(closest.params - real) / closest.params < 0.35:
                size, how = closest.size, f"parameter count {summary.parameter_label}"
    entry = family.entries.get(size)
    if entry is None:
        return f"the table has no {family_name} of size {size}"
    repo = entry.variants.get(variant)
    if repo is None:
        return f"the table has no {variant} variant of {family_name}:{size}"
    arch = ARCH_OVERRIDES.get((family_name, size), entry.arch)
    if summary is not None and summary.architecture and arch and summary.architecture != arch:
        return f"the table maps {family_name}:{size} to {repo} (arch {arch}), but this GGUF is {summary.architecture}"
    return entry, repo, f"{family_name} {size} {variant} (from {how})"


def _describe(model: OllamaModel | str) -> tuple[str, str, str, bool, GgufSummary | None]:
    """(full_name, name, tag, is_library, summary) for a model object or a name string."""
    if isinstance(model, str):
        registry, namespace, name, tag = parse_model_name(model)
        library = registry in PUBLIC_HOSTS and namespace == DEFAULT_NAMESPACE
        full = f"{name}:{tag}" if library else model.removeprefix("ollama:")
        return full, name, tag, library, None
    library = model.registry in PUBLIC_HOSTS and model.namespace == DEFAULT_NAMESPACE
    return model.full_name, model.name, model.tag, library, model.summary


def map_base_model(model: OllamaModel | str, settings: Settings | None = None, *,
                   summary: GgufSummary | None = None, cache_status: Any = None) -> BaseModelInfo:
    """Map an Ollama model (object or ``name[:tag]``) to its HF repo, with where that came from and cache status."""
    full_name, name, tag, library, own_summary = _describe(model)
    summary = summary or own_summary
    repo: str | None = None
    source: str | None = None
    size: int | None = None
    override = _override(settings, full_name, name)
    table = _from_table(name, tag, library, summary)
    if isinstance(table, tuple):
        size = table[0].download_bytes
    if override is not None:
        if override.lower() in (NO_MAPPING, ""):
            return BaseModelInfo(None, "user", f"user override: no base model for {full_name}")
        repo, source, detail = override, "user", f"user override in settings ({full_name} -> {override})"
        if not isinstance(table, tuple) or table[1] != repo:
            size = None
    elif (meta := _from_metadata(summary)) is not None:
        repo, source, detail = meta[0], "gguf-metadata", meta[1]
        if not isinstance(table, tuple) or table[1] != repo:
            size = None
    elif isinstance(table, tuple):
        repo, source, detail = table[1], "table", table[2]
    else:
        meta_note = "" if summary is None else "; the GGUF has no general.base_model"
        return BaseModelInfo(None, None, f"no mapping: {table}{meta_note}")
    lookup = cache_status or CacheStatusLookup(settings)
    state, cached_size, revision = lookup(repo)
    return BaseModelInfo(repo, source, detail, state, cached_size, size, revision)


def set_base_model_override(settings: Settings, model_name: str, repo: str | None) -> Path:
    """Save (or with ``None`` remove) a user mapping in the settings file; ``"none"`` pins "no mapping"."""
    if repo is not None:
        repo = repo.strip()
        if repo.lower() != NO_MAPPING and not REPO_ID_RE.fullmatch(repo):
            raise ConfigError(f"invalid Hugging Face repo id {repo!r} (expected org/name, or 'none')")
    from llamaforge_tui.core.settings import Settings as _Settings

    key = model_name.strip().removeprefix("ollama:")
    # Re-read the file so that command-line overrides held in ``settings`` (--models-dir) are not persisted.
    on_disk = _Settings.load()
    for target in (on_disk, settings):
        overrides = dict(target.base_model_overrides)
        if repo is None:
            overrides.pop(key, None)
        else:
            overrides[key] = repo
        target.base_model_overrides = overrides
    return on_disk.save()


# --------------------------------------------------------------------------------------------------
# The store, with each model's base mapped. The store scan (``core.ollama.store``) knows nothing of the
# HF cache; joining the two happens here, one layer above both.


def with_base_models(models: list[OllamaModel], settings: Settings | None = None) -> list[OllamaModel]:
    """Fill ``base_model`` on each readable model; one cache look per repo for the whole list."""
    lookup = CacheStatusLookup(settings)
    for model in models:
        if model.status not in ("broken", "cloud"):
            model.base_model = map_base_model(model, settings, cache_status=lookup)
    return models


def scan_models(settings: Settings | None = None, *, summarize: bool = True, map_base: bool = True,
                use_summary_cache: bool = True) -> StoreScan:
    """``scan_store``, then the base mapping and its cache status (``map_base``)."""
    scan = scan_store(settings, summarize=summarize, use_summary_cache=use_summary_cache)
    if map_base:
        with_base_models(scan.models, settings)
    return scan


def find_ollama_model(settings: Settings | None, name: str, *, summarize: bool = True,
                      map_base: bool = True) -> OllamaModel:
    """``find_model``, then the base mapping (``map_base``)."""
    model = find_model(settings, name, summarize=summarize)
    if map_base:
        with_base_models([model], settings)
    return model


def ollama_models_by_repo(settings: Settings | None) -> tuple[dict[str, list[str]], str | None]:
    """Map each HF repo to the Ollama models whose base it is. Returns ``(mapping, note)``; the note
    says why the mapping is empty when the store could not be read."""
    from llamaforge_tui.core.hub.usage import models_by_repo

    try:
        scan = scan_models(settings)
    except LlamaForgeError as exc:
        return {}, f"Ollama store not readable: {exc}"
    return models_by_repo(scan.models), None
