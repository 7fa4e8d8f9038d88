"""Deleting a run folder and pruning its checkpoints, each planned first so a confirmation can say what goes.

A run that is still training (its ``.lock`` is held) is never touched: its trainer would write into a folder
that is disappearing. Deleting renames the folder aside first, so a half-deleted run never shows up as a run.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llamaforge_tui.core.errors import ConfigError, LlamaForgeError
from llamaforge_tui.core.train import runs
from llamaforge_tui.core.train.checkpoint import complete_checkpoints
from llamaforge_tui.core.train.run_details import tree_size


class RunBusy(LlamaForgeError):
    """The run is being trained by a live process."""


def _refuse_if_running(run_dir: Path, what: str) -> None:
    if runs.is_locked(run_dir):
        raise RunBusy(f"cannot {what} {run_dir.name}: it is still training (its lock is held); stop it first")


@dataclass(frozen=True)
class RunDeletePlan:
    run_dir: Path
    size_bytes: int
    checkpoints: int
    exports: list[str]  # GGUF files inside the folder that go with it
    registered: list[str]  # Ollama models its exports registered (they stay in Ollama)

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.run_dir), "size_bytes": self.size_bytes, "checkpoints": self.checkpoints,
                "exports": self.exports, "registered": self.registered}


def plan_run_delete(run_dir: Path) -> RunDeletePlan:
    from llamaforge_tui.core.train.run_details import read_exports

    if not (run_dir / runs.CONFIG_FILE).is_file():
        raise ConfigError(f"{run_dir} is not a run folder (no {runs.CONFIG_FILE})")
    _refuse_if_running(run_dir, "delete")
    exports = read_exports(run_dir)
    inside = [str(p) for e in exports for p in (e.get("gguf_path"), e.get("adapter_path"))
              if p and e.get("exists") and Path(p).resolve().is_relative_to(run_dir.resolve())]
    return RunDeletePlan(run_dir=run_dir, size_bytes=tree_size(run_dir), checkpoints=len(complete_checkpoints(run_dir)),
                         exports=inside, registered=sorted({e["registered_as"] for e in exports
                                                            if e.get("registered_as")}))


def delete_run(run_dir: Path) -> int:
    """Delete the whole run folder; returns the bytes freed. Refused while the run trains."""
    plan = plan_run_delete(run_dir)
    _refuse_if_running(run_dir, "delete")
    aside = run_dir.with_name(f".deleting-{run_dir.name}-{os.getpid()}")
    try:
        os.rename(run_dir, aside)
    except OSError as exc:
        raise LlamaForgeError(f"cannot delete {run_dir}: {exc.strerror or exc}") from exc
    shutil.rmtree(aside, ignore_errors=True)
    if aside.exists():
        raise LlamaForgeError(f"{run_dir} was only partly deleted; remove {aside} by hand")
    return plan.size_bytes


@dataclass
class PrunePlan:
    run_dir: Path
    remove: list[tuple[int, Path, int]] = field(default_factory=list)  # (step, path, bytes)
    keep: list[int] = field(default_factory=list)  # steps kept

    @property
    def freed_bytes(self) -> int:
        return sum(size for _, _, size in self.remove)

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.run_dir), "freed_bytes": self.freed_bytes, "keep": self.keep,
                "remove": [{"step": s, "path": str(p), "size_bytes": n} for s, p, n in self.remove]}


def plan_prune(run_dir: Path, keep_last: int | None) -> PrunePlan:
    """``keep_last=N``: keep the newest N checkpoints. ``None``: keep only the final adapter (every checkpoint
    goes), which needs a final adapter to exist, since without one the checkpoints are all the run has."""
    _refuse_if_running(run_dir, "prune")
    found = complete_checkpoints(run_dir)
    if keep_last is None:
        if not (run_dir / runs.ADAPTER_DIR).is_dir():
            raise ConfigError(f"{run_dir.name} has no final adapter yet; keep at least its last checkpoint")
        kept: list[tuple[int, Path]] = []
    else:
        if keep_last < 0:
            raise ConfigError("keep at least 0 checkpoints")
        kept = found[len(found) - keep_last:] if keep_last else []
        if not kept and found and not (run_dir / runs.ADAPTER_DIR).is_dir():
            raise ConfigError(f"{run_dir.name} has no final adapter yet; keep at least its last checkpoint")
    keep_steps = [s for s, _ in kept]
    remove = [(s, p, tree_size(p)) for s, p in found if s not in keep_steps]
    return PrunePlan(run_dir, remove, keep_steps)


def prune_checkpoints(plan: PrunePlan) -> int:
    """Carry out a plan; returns the bytes freed. Each checkpoint is renamed aside before it is removed, so a
    crash leaves a ``.old-*`` folder (swept by the next run), never a half checkpoint that looks complete."""
    _refuse_if_running(plan.run_dir, "prune")
    freed = 0
    for step, path, size in plan.remove:
        aside = path.with_name(f".old-prune-step-{step}-{os.getpid()}")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            continue
        shutil.rmtree(aside, ignore_errors=True)
        freed += size
    return freed
