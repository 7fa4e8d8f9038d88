"""The Ollama model store on disk: which models the user has, and where their GGUF weights are.

Scanning reads files only (manifests, small config blobs, GGUF headers); it never needs the Ollama server,
which may be down, remote, or owned by another user. Every model found is listed, even the ones we cannot
train from, with a ``status`` and a ``reason`` saying why (cloud model, tensor layers, split GGUF, missing
blob, broken manifest), because a model that silently disappears from the list is worse than one marked.

Layout (``shared/FORMATS.md`` section 5): ``<root>/manifests/<host>/<namespace>/<model>/<tag>`` (legacy) and
``<root>/manifests-v2/<host>/<namespace>/<model>/<tag>`` (newer; may be a manifest list); blobs live in
``<root>/blobs/sha256-<hex>``. A v2 entry wins over a legacy one for the same name.
"""

from __future__ import annotations

import logging
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from llamaforge_tui.core.errors import GgufError, StoreError
from llamaforge_tui.core.ollama.api import OllamaClient, ServerStatus, ollama_host, server_status
from llamaforge_tui.core.ollama.manifest import (
    Layer,
    ManifestError,
    is_manifest_list,
    parse_json,
    parse_manifest,
    parse_manifest_list,
    pick_list_entry,
    read_manifest_bytes,
)
from llamaforge_tui.core.ollama.model import (
    DEFAULT_NAMESPACE,
    DEFAULT_REGISTRY,
    DEFAULT_TAG,
    PUBLIC_HOSTS,
    STATUSES,
    OllamaModel,
    parse_model_name,
)

if TYPE_CHECKING:
    from llamaforge_tui.core.gguf.info import SummaryCache
    from llamaforge_tui.core.settings import Settings

__all__ = [
    "DEFAULT_NAMESPACE", "DEFAULT_REGISTRY", "DEFAULT_TAG", "PUBLIC_HOSTS", "STATUSES", "OllamaClient", "OllamaModel",
    "ServerStatus", "StoreScan", "default_roots", "find_model", "ollama_host", "parse_model_name", "scan_store",
    "server_status",
]

log = logging.getLogger(__name__)
PERMISSION_HINT = "permission denied: add yourself to the ollama group, or set OLLAMA_MODELS"


def default_roots(settings: Settings | None = None) -> list[Path]:
    """The folders to scan, in priority order: the setting/``--models-dir`` if given, else Ollama's defaults."""
    if settings is not None and settings.models_dirs:
        candidates = [Path(p).expanduser() for p in settings.models_dirs]
    else:
        candidates = []
        if env := os.environ.get("OLLAMA_MODELS"):
            candidates.append(Path(env).expanduser())
        # Ollama's own default on every platform: ~/.ollama/models on Linux and macOS, and
        # %USERPROFILE%\.ollama\models on Windows (Path.home() reads USERPROFILE there).
        candidates.append(Path.home() / ".ollama" / "models")
        if sys.platform.startswith("linux"):  # the Linux install script runs the server as user 'ollama'
            candidates.append(Path("/usr/share/ollama/.ollama/models"))
    seen: set[str] = set()
    roots = []
    for path in candidates:
        key = os.path.abspath(path)
        if key not in seen:
            seen.add(key)
            roots.append(path)
    return roots


@dataclass
class StoreScan:
    models: list[OllamaModel]
    problems: list[str]
    roots: list[Path]  # the roots that were read


def _scandir(path: Path, problems: list[str]) -> list[os.DirEntry[str]]:
    """List a folder, turning permission and I/O errors into a reported problem instead of a crash."""
    try:
        with os.scandir(path) as it:
            return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    except PermissionError:
        problems.append(f"cannot read {path}: {PERMISSION_HINT}")
    except OSError as exc:
        problems.append(f"cannot read {path}: {exc.strerror or exc}")
    return []


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _walk_manifests(root: Path, layout: str, problems: list[str]) -> list[OllamaModel]:
    base = root / layout
    found = []
    for host in _scandir(base, problems):
        if not _is_dir(host):
            continue
        for ns in _scandir(Path(host.path), problems):
            if not _is_dir(ns):
                continue
            for model in _scandir(Path(ns.path), problems):
                if not _is_dir(model):
                    continue
                for tag in _scandir(Path(model.path), problems):
                    if _is_dir(tag):
                        continue
                    found.append(OllamaModel(
                        name=model.name, tag=tag.name, namespace=ns.name,
                        registry=host.name.replace("%3A", ":").replace("%3a", ":"),
                        manifest_path=Path(tag.path), root=root, layout=layout))
    return found


def _read_config(model: OllamaModel, config: Layer | None) -> None:
    if config is None or not config.path.is_file():
        return
    try:
        doc = parse_json(read_manifest_bytes(config.path), config.path)
    except ManifestError as exc:
        log.debug("ignoring unreadable config blob of %s: %s", model.full_name, exc)
        return
    model.config = doc


def _load_manifest(model: OllamaModel) -> None:
    """Fill layers/status from the manifest file. Never raises for a bad manifest: marks the model broken."""
    try:
        doc = parse_json(read_manifest_bytes(model.manifest_path), model.manifest_path)
        if is_manifest_list(doc):
            entry = pick_list_entry(parse_manifest_list(doc, model.root, model.manifest_path))
            if not entry.path.is_file():
                _mark(model, "missing_blob", f"manifest list child {entry.digest} is missing ({entry.path})")
                return
            doc = parse_json(read_manifest_bytes(entry.path), entry.path)
        manifest = parse_manifest(doc, model.root, model.manifest_path)
    except ManifestError as exc:
        _mark(model, "broken", str(exc))
        return
    model.all_layers = list(manifest.layers)
    for layer in manifest.layers:
        model.layers.setdefault(layer.kind, layer.path)
    _read_config(model, manifest.config)
    _classify(model)


def _mark(model: OllamaModel, status: str, reason: str) -> None:
    model.status, model.reason = status, reason


def _classify(model: OllamaModel) -> None:
    weights = [layer for layer in model.all_layers if layer.kind == "model"]
    tensors = [layer for layer in model.all_layers if layer.kind == "tensor"]
    remote = model.config.get("remote_host") or model.config.get("remote_model")
    model.size_bytes = model.total_size_bytes or None
    if not weights:
        if remote or model.tag.endswith("cloud"):
            where = f" ({remote})" if isinstance(remote, str) else ""
            _mark(model, "cloud", f"runs remotely{where}; no local weights")
        elif tensors:
            _mark(model, "tensor", f"stored as {len(tensors)} tensor layers (safetensors/MLX), not a GGUF")
        else:
            _mark(model, "unsupported", "the manifest has no model (GGUF) layer")
        return
    missing = [layer for layer in weights if not layer.path.is_file()]
    if missing:
        _mark(model, "missing_blob", f"model blob {missing[0].path} is missing")
        return
    model.gguf_path = weights[0].path
    try:
        model.size_bytes = weights[0].path.stat().st_size
    except OSError as exc:
        _mark(model, "missing_blob", f"cannot stat model blob {weights[0].path}: {exc.strerror or exc}")
        return
    if len(weights) > 1:
        _mark(model, "split", f"the GGUF is split into {len(weights)} parts; merge it with llama-gguf-split first")


def enrich(model: OllamaModel, *, summarize: bool = True, summaries: SummaryCache | None = None) -> OllamaModel:
    """Read the GGUF header. Errors land on the model, never escape. (The Hugging Face base is mapped a
    layer up, in ``core.model.basemodel``: it joins this store with the HF cache.)"""
    if summarize and model.gguf_path is not None and model.status in ("ok", "split"):
        from llamaforge_tui.core.gguf.info import summarize_gguf

        try:
            model.summary = summaries.summarize(model.gguf_path) if summaries else summarize_gguf(model.gguf_path)
        except GgufError as exc:
            unsupported = any(w in str(exc).lower() for w in ("unsupported", "not supported"))
            _mark(model, "unsupported" if unsupported else "broken", f"GGUF: {exc}")
        else:
            if model.status == "ok" and model.summary.split_count > 1:
                _mark(model, "split", f"the GGUF is split into {model.summary.split_count} files; "
                      "merge it with llama-gguf-split first")
    return model


def _collect(settings: Settings | None, problems: list[str]) -> tuple[list[OllamaModel], list[Path]]:
    explicit = bool(settings and settings.models_dirs)
    roots_read: list[Path] = []
    by_key: dict[tuple[str, str, str, str], OllamaModel] = {}
    candidates = default_roots(settings)
    for root in candidates:
        try:
            is_dir = stat.S_ISDIR(os.stat(root).st_mode)
        except PermissionError:
            problems.append(f"cannot read {root}: {PERMISSION_HINT}")
            continue
        except FileNotFoundError:
            if explicit:
                problems.append(f"models folder {root} does not exist")
            continue
        except OSError as exc:
            problems.append(f"cannot read {root}: {exc.strerror or exc}")
            continue
        if not is_dir:
            problems.append(f"models folder {root} is not a folder")
            continue
        if not os.access(root, os.R_OK | os.X_OK):
            problems.append(f"cannot read {root}: {PERMISSION_HINT}")
            continue
        roots_read.append(root)
        for layout in ("manifests-v2", "manifests"):  # v2 first: it wins
            for model in _walk_manifests(root, layout, problems):
                by_key.setdefault(model.key, model)
    if not roots_read and not problems:
        looked = ", ".join(str(r) for r in candidates)
        problems.append(f"no Ollama models folder found (looked in {looked}); set OLLAMA_MODELS or use --models-dir")
    return list(by_key.values()), roots_read


def summary_cache_path() -> Path:
    from llamaforge_tui.core.settings import data_dir

    return data_dir() / "cache" / "gguf-summaries.json"


def scan_store(settings: Settings | None = None, *, summarize: bool = True,
               use_summary_cache: bool = True) -> StoreScan:
    """Every model in every root, sorted by name. Unreadable roots and folders go to ``problems``.

    GGUF summaries are kept in ``<data dir>/cache/gguf-summaries.json`` (``use_summary_cache``): the first
    scan reads every header, later ones only new or changed blobs.
    """
    problems: list[str] = []
    models, roots = _collect(settings, problems)
    summaries = None
    if summarize and use_summary_cache:
        from llamaforge_tui.core.gguf.info import SummaryCache

        summaries = SummaryCache(summary_cache_path())
    for model in models:
        _load_manifest(model)
        enrich(model, summarize=summarize, summaries=summaries)
    if summaries is not None:
        summaries.save()
    models.sort(key=lambda m: (m.full_name.lower(), m.layout))
    return StoreScan(models=models, problems=problems, roots=roots)


def find_model(settings: Settings | None, name: str, *, summarize: bool = True) -> OllamaModel:
    """The model called ``name`` (``gemma3``, ``gemma3:270m``, ``user/m:tag``); StoreError if absent."""
    registry, namespace, model_name, tag = parse_model_name(name)
    host = DEFAULT_REGISTRY if registry in PUBLIC_HOSTS else registry.lower()
    wanted = (host, namespace.lower(), model_name.lower(), tag.lower())
    problems: list[str] = []
    models, roots = _collect(settings, problems)
    for model in models:
        if model.key == wanted:
            _load_manifest(model)
            return enrich(model, summarize=summarize)
    where = ", ".join(str(r) for r in roots) or "no readable models folder"
    hint = f" ({'; '.join(problems)})" if problems else ""
    raise StoreError(f"Ollama model {name!r} not found in {where}{hint}")
