"""Who uses a cached repo: Ollama models mapped to it, the selected model, training runs.

The Ollama mapping comes from ``core.ollama.scan_store`` (each model's ``base_model.repo``) and the runs
from ``core.runs.list_runs``. Both belong to other modules; they are imported lazily and any failure
degrades to "unknown" (an empty mapping plus a note), because the cache pane must work without them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from llamaforge_tui.core.errors import LlamaForgeError
from llamaforge_tui.core.hf_cache_layout import TYPE_FROM_PREFIX

log = logging.getLogger(__name__)


def models_by_repo(models: Iterable[Any]) -> dict[str, list[str]]:
    """``{hf repo: [ollama model full names]}`` from objects with ``.base_model.repo`` and ``.full_name``."""
    usage: dict[str, list[str]] = {}
    for model in models:
        base = getattr(model, "base_model", None)
        repo = getattr(base, "repo", None)
        if repo:
            usage.setdefault(repo, []).append(str(getattr(model, "full_name", model)))
    return {repo: sorted(set(names)) for repo, names in usage.items()}


def ollama_usage(settings: Any) -> tuple[dict[str, list[str]], str | None]:
    """Map each HF repo to the Ollama models whose base it is. Returns ``(mapping, note)``; the note
    says why the mapping is empty when the store could not be read."""
    try:
        from llamaforge_tui.core.ollama import scan_store
    except ImportError as exc:
        return {}, f"Ollama mapping unavailable ({exc})"
    try:
        scan = scan_store(settings)
    except LlamaForgeError as exc:
        return {}, f"Ollama store not readable: {exc}"
    return models_by_repo(scan.models), None


def repo_of_source(source: str | None) -> str | None:
    """The HF repo a training source refers to: ``hf:org/name[@rev]``, or a path inside a cache repo
    folder (``.../models--org--name/snapshots/<commit>``). Other sources (Ollama, .gguf) -> ``None``."""
    if not source:
        return None
    text = str(source).strip()
    if text.startswith("hf:"):
        return text[3:].partition("@")[0] or None
    for part in Path(text).parts:
        prefix, sep, rest = part.partition("--")
        if sep and TYPE_FROM_PREFIX.get(prefix) == "model" and rest:
            return rest.replace("--", "/")
    return None


def runs_by_repo(runs: Iterable[Any]) -> dict[str, list[str]]:
    """``{hf repo: [run ids]}`` from run summaries with ``.source`` and ``.run_id``.

    A run's ``source`` may be a string or a dict (``source.json``); for a dict, ``hf_repo`` or
    ``source`` is used.
    """
    usage: dict[str, list[str]] = {}
    for run in runs:
        source = getattr(run, "source", None)
        repo = None
        if isinstance(source, dict):
            repo = source.get("hf_repo") or repo_of_source(source.get("source"))
        else:
            repo = repo_of_source(source)
        if repo:
            usage.setdefault(repo, []).append(str(getattr(run, "run_id", "?")))
    return usage


def run_usage(settings: Any) -> dict[str, list[str]]:
    """``{hf repo: [run ids]}`` over ``core.runs.list_runs(settings)``. A run whose SOURCE is not a
    Hugging Face one (an Ollama model trained with ``--weights hf``) still counts through the ``hf_repo``
    recorded in its ``source.json``. Empty when runs cannot be listed."""
    try:
        from llamaforge_tui.core.runs import list_runs, read_source
    except ImportError:
        return {}
    try:
        runs = list_runs(settings)
    except (LlamaForgeError, OSError) as exc:
        log.warning("cannot list training runs: %s", exc)
        return {}
    usage = runs_by_repo(runs)
    for run in runs:
        if repo_of_source(getattr(run, "source", None)):
            continue
        try:
            description = read_source(Path(run.path))
        except (LlamaForgeError, OSError, ValueError):
            continue
        repo = description.get("hf_repo") if isinstance(description, dict) else None
        if repo:
            usage.setdefault(repo, []).append(str(run.run_id))
    return usage


def needed_by(repo_id: str, *, selected_model: Any = None, runs: dict[str, list[str]] | None = None) -> list[str]:
    """Reasons not to delete ``repo_id``: the selected Ollama model maps to it, or runs trained from it."""
    reasons: list[str] = []
    base = getattr(selected_model, "base_model", None)
    if base is not None and getattr(base, "repo", None) == repo_id:
        reasons.append(f"the selected Ollama model {getattr(selected_model, 'full_name', selected_model)} maps to it")
    run_ids = (runs or {}).get(repo_id, [])
    if run_ids:
        shown = ", ".join(run_ids[:3]) + (f" and {len(run_ids) - 3} more" if len(run_ids) > 3 else "")
        reasons.append(f"training run(s) {shown} use it")
    return reasons
