"""Who uses a cached repo: Ollama models mapped to it, the selected model, training runs.

Pure functions over what the caller gathered: the Ollama mapping comes from ``core.model.basemodel``
(``ollama_models_by_repo``) and the runs from ``core.train.runs`` (``runs_by_hf_repo``), both layers
above this one.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from llamaforge_tui.core.hub.layout import TYPE_FROM_PREFIX


def models_by_repo(models: Iterable[Any]) -> dict[str, list[str]]:
    """``{hf repo: [ollama model full names]}`` from objects with ``.base_model.repo`` and ``.full_name``."""
    usage: dict[str, list[str]] = {}
    for model in models:
        base = getattr(model, "base_model", None)
        repo = getattr(base, "repo", None)
        if repo:
            usage.setdefault(repo, []).append(str(getattr(model, "full_name", model)))
    return {repo: sorted(set(names)) for repo, names in usage.items()}


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
