"""Plain-text renderings for the HF cache pane (kept apart so the pane module stays about behaviour)."""

from __future__ import annotations

from datetime import datetime

from llamaforge_tui.core.fsutil import human_bytes
from llamaforge_tui.core.hub.cache import RepoEntry


def short_date(stamp: float) -> str:
    return datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M") if stamp else "-"


def complete_label(repo: RepoEntry) -> str:
    if repo.corrupt:
        return "corrupt"
    return {True: "yes", False: "no", None: "-"}[repo.complete]


def repo_details(repo: RepoEntry, used_by: list[str], runs: list[str], needed: list[str]) -> str:
    """Plain text for the details panel (shown with markup off)."""
    lines = [f"{repo.repo_id}  ({repo.repo_type})", f"Path: {repo.repo_path}",
             f"Size: {human_bytes(repo.size_bytes)} in {repo.nb_files} file(s), {len(repo.revisions)} revision(s)"
             + (f"; refs: {', '.join(repo.refs)}" if repo.refs else "")]
    if repo.corrupt:
        lines.append(f"Damaged: {repo.corrupt}")
    if repo.repo_type == "model":
        good = [r for r in repo.revisions if r.complete]
        if good:
            lines.append(f"Complete model: yes (revision {good[0].commit[:12]})")
        else:
            missing = repo.revisions[0].missing if repo.revisions else ("snapshot",)
            lines.append(f"Complete model: no, missing {', '.join(missing)}")
        lines.append(f"Ollama models mapped to it: {', '.join(used_by) or 'none'}")
    if runs:
        lines.append(f"Training runs from it: {', '.join(runs)}")
    lines.extend(f"Still needed: {reason}" for reason in needed)
    return "\n".join(lines)
