"""Run folders: where a training run keeps everything, and how runs are listed.

Layout of ``<runs dir>/<run id>/``::

    config.toml          the TrainConfig the run was started with
    source.json          the model source's SourceDescription.to_dict() (EXPORT reads it)
    events.jsonl         one JSON event per line (RunStarted ... RunFinished/RunFailed)
    checkpoints/step-N/  resumable checkpoints (see checkpoint.py); ``.tmp-*`` folders are half-written
    adapter/             the final LoRA adapter (peft save_pretrained, safetensors)
    stop                 present while a stop is requested (a monitor in another process may create it)
    exports.jsonl        one line per export (the ``export --json`` object, plus ``time``)
    .lock                held (flock) by the process training the run, so a crashed run reads "interrupted"

The status comes from the last terminal event and the lock, never from a separate status file that
a crash could leave stale.
"""

from __future__ import annotations

import contextlib
import logging
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from llamaforge_tui.core.errors import ConfigError, LlamaForgeError
from llamaforge_tui.core.hub.usage import repo_of_source, runs_by_repo
from llamaforge_tui.core.train.events import EventReader, RunFailed, RunFinished, RunStarted, StepLogged
from llamaforge_tui.core.fsutil import atomic_write_text
from llamaforge_tui.core.settings import Settings

log = logging.getLogger(__name__)

CONFIG_FILE = "config.toml"
SOURCE_FILE = "source.json"
EVENTS_FILE = "events.jsonl"
CHECKPOINTS_DIR = "checkpoints"
ADAPTER_DIR = "adapter"
STOP_FILE = "stop"
LOCK_FILE = ".lock"
EXPORTS_FILE = "exports.jsonl"

STATUSES = ("running", "finished", "stopped", "failed", "interrupted", "new")


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    path: Path
    status: str  # one of STATUSES
    step: int
    total_steps: int
    final_loss: float | None
    started: float | None  # UNIX time of RunStarted (or of the folder)
    source: str  # the model SOURCE string
    reason: str | None = None  # RunFailed reason
    adapter_path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "path": str(self.path), "status": self.status, "step": self.step,
            "total_steps": self.total_steps, "final_loss": self.final_loss, "started": self.started,
            "source": self.source, "reason": self.reason, "adapter_path": self.adapter_path,
        }


def new_run_id(model: str, now: float | None = None) -> str:
    """``20261127-121314-gemma3-270m``: sortable by time, readable, safe as a folder name."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now if now is not None else time.time()))
    tail = model.rstrip("/").rsplit("/", 1)[-1]
    tail = re.sub(r"\.gguf$", "", tail, flags=re.IGNORECASE)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", tail.split(":", 1)[-1] if tail.startswith(("ollama", "hf")) else tail)
    slug = slug.strip("-._")[:40] or "run"
    return f"{stamp}-{slug}"


def resolve_run_dir(settings: Settings, output_dir: str, model: str) -> Path:
    """The run folder a config points at: its ``output_dir``, or a fresh ``<runs dir>/<run id>``."""
    if output_dir:
        return Path(output_dir).expanduser().resolve()
    base = settings.runs_path
    run_id = new_run_id(model)
    path = base / run_id
    n = 1
    while path.exists():  # two runs started in the same second
        n += 1
        path = base / f"{run_id}-{n}"
    return path.resolve()


def find_run(settings: Settings, name_or_path: str | Path) -> Path:
    """A run given as a folder path or as a run id under the runs dir."""
    candidate = Path(name_or_path).expanduser()
    for path in (candidate, settings.runs_path / str(name_or_path)):
        if (path / CONFIG_FILE).is_file():
            return path.resolve()
    raise ConfigError(f"no run at {name_or_path}: expected a run folder with {CONFIG_FILE} "
                      f"(runs are listed by 'llamaforge runs')")


def write_source(run_dir: Path, description: dict[str, Any]) -> None:
    atomic_write_text(run_dir / SOURCE_FILE, json.dumps(description, indent=2, ensure_ascii=False, default=str))


def read_source(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


# -- stop requests -------------------------------------------------------------------------------
def request_stop(run_dir: Path | str) -> None:
    """Ask the process training ``run_dir`` to stop after its current step (works across processes)."""
    atomic_write_text(Path(run_dir) / STOP_FILE, f"{time.time()}\n")


def stop_requested(run_dir: Path) -> bool:
    return (run_dir / STOP_FILE).exists()


def clear_stop(run_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (run_dir / STOP_FILE).unlink()


# -- the run lock --------------------------------------------------------------------------------
class RunLock:
    """An exclusive ``flock`` on ``<run>/.lock`` held while training. The kernel drops it when the
    process dies (even by SIGKILL), so "running" can never outlive the trainer."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_FILE
        self._fh: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the run's lifetime
        if not _try_lock(fh):
            fh.close()
            raise ConfigError(f"run {self.path.parent} is being trained by another process")
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing drops the flock
            self._fh = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _try_lock(fh: IO[str]) -> bool:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks, assume free
        return True
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def is_locked(run_dir: Path) -> bool:
    """True while some process holds the run's lock (i.e. is training it)."""
    path = run_dir / LOCK_FILE
    if not path.exists():
        return False
    with open(path, "a+", encoding="utf-8") as fh:
        return not _try_lock(fh)  # closing the handle releases our probe lock


# -- listing -------------------------------------------------------------------------------------
def summarize_run(run_dir: Path) -> RunSummary:
    """Status and progress of one run folder, from its events and its lock."""
    events = EventReader(run_dir / EVENTS_FILE).poll()
    status, step, total, final_loss, started, reason, adapter = "new", 0, 0, None, None, None, None
    last_loss: float | None = None
    for event in events:
        if isinstance(event, RunStarted):
            started = started or event.time
            total = event.total_steps
            step = max(step, event.resumed_from_step)
            status, reason = "running", None
        elif isinstance(event, StepLogged):
            step, total, last_loss = event.step, event.total_steps, event.loss
        elif isinstance(event, RunFinished):
            step, total = event.step, event.total_steps
            status = "stopped" if event.stopped else "finished"
            final_loss, adapter = event.final_loss, event.adapter_path
        elif isinstance(event, RunFailed):
            step, status, reason = max(step, event.step), "failed", event.reason
    if status == "running" and not is_locked(run_dir):
        status = "interrupted"
    elif status == "new" and is_locked(run_dir):
        status = "running"
    if final_loss is None:
        final_loss = last_loss
    source = ""
    with contextlib.suppress(ConfigError):
        from llamaforge_tui.core.train.config import TrainConfig

        source = TrainConfig.from_file(run_dir / CONFIG_FILE).model
    if started is None:
        with contextlib.suppress(OSError):
            started = (run_dir / CONFIG_FILE).stat().st_mtime
    return RunSummary(run_id=run_dir.name, path=run_dir, status=status, step=step, total_steps=total,
                      final_loss=final_loss, started=started, source=source, reason=reason, adapter_path=adapter)


def list_runs(settings: Settings) -> list[RunSummary]:
    """Every run folder under the runs dir, newest first."""
    base = settings.runs_path
    if not base.is_dir():
        return []
    runs = [summarize_run(p) for p in base.iterdir() if p.is_dir() and (p / CONFIG_FILE).is_file()]
    return sorted(runs, key=lambda r: (r.started or 0.0, r.run_id), reverse=True)


def runs_by_hf_repo(settings: Settings) -> dict[str, list[str]]:
    """``{hf repo: [run ids]}`` over ``list_runs(settings)``. A run whose SOURCE is not a Hugging Face one
    (an Ollama model trained with ``--weights hf``) still counts through the ``hf_repo`` recorded in its
    ``source.json``. Empty when runs cannot be listed."""
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


# -- exports and the Ollama models runs came from ------------------------------------------------
def record_export(run_dir: Path | str, record: dict[str, Any]) -> None:
    """Append one export's ``export --json`` object to ``exports.jsonl`` (``runs show`` lists them). The file
    is rewritten atomically, so a crash never leaves half a line."""
    path = Path(run_dir) / EXPORTS_FILE
    line = json.dumps({**record, "time": time.time()}, ensure_ascii=False, default=str)
    try:
        try:
            old = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            old = ""
        atomic_write_text(path, old + ("" if not old or old.endswith("\n") else "\n") + line + "\n")
    except OSError as exc:  # the export itself is done; a missing record only hides it from `runs show`
        log.warning("cannot record the export in %s: %s", path, exc)


def _ollama_name(text: str) -> str | None:
    if not text.startswith("ollama:"):
        return None
    name = text[len("ollama:"):].strip()
    return name if ":" in name.rsplit("/", 1)[-1] else (name + ":latest" if name else None)


def runs_by_ollama_model(settings: Settings) -> dict[str, list[str]]:
    """``{ollama model name: [why]}``: the models a run was trained from ("run X was trained from it") and the
    ones an export registered ("exported from run X"), so a delete can flag them. Empty when runs cannot be read."""
    try:
        summaries = list_runs(settings)
    except (LlamaForgeError, OSError) as exc:
        log.warning("cannot list training runs: %s", exc)
        return {}
    usage: dict[str, list[str]] = {}
    for run in summaries:
        name = _ollama_name(run.source or "") or read_source(run.path).get("ollama_model")
        if name:
            usage.setdefault(str(name), []).append(f"run {run.run_id} was trained from it")
        try:
            lines = (run.path / EXPORTS_FILE).read_text(encoding="utf-8").splitlines()
        except OSError:
            continue
        for line in lines:
            with contextlib.suppress(ValueError, AttributeError):
                registered = json.loads(line).get("registered_as")
                if registered:
                    usage.setdefault(str(registered), []).append(f"exported from run {run.run_id}")
    return usage


def plan_model_delete(settings: Settings, name: str) -> Any:
    """``core.ollama.delete_plan.DeletePlan`` for the Ollama model ``name``, flagged with the runs trained from it
    and the exports registered as it; None when the local store does not hold it (the server may be remote)."""
    from llamaforge_tui.core.ollama.delete_plan import plan_delete
    from llamaforge_tui.core.ollama.store import find_model, scan_store

    try:
        model = find_model(settings, name, summarize=False)
    except LlamaForgeError:
        return None
    plan = plan_delete(model, scan_store(settings, summarize=False).roots)
    plan.flagged = runs_by_ollama_model(settings).get(model.full_name, [])
    return plan
