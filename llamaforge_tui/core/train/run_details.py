"""Everything about one run folder (``runs show``), and several runs side by side (``runs compare``).

The figures come from the run's own files: ``events.jsonl`` (status, losses, speed, duration), ``config.toml``,
``source.json``, ``checkpoints/``, ``adapter/``, ``exports.jsonl`` (one line per export, with its verification
and registered name), the files under ``export/``, and ``eval.json`` (written by ``llamaforge eval``).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llamaforge_tui.core.errors import ConfigError
from llamaforge_tui.core.fsutil import human_bytes
from llamaforge_tui.core.train import runs
from llamaforge_tui.core.train.checkpoint import complete_checkpoints
from llamaforge_tui.core.train.events import EvalLogged, EventReader, RunFinished, StepLogged

EVAL_FILE = "eval.json"
EXPORT_DIR = "export"


def tree_size(path: Path) -> int:
    """Bytes under ``path`` (files counted once per inode, symlinks not followed)."""
    total, seen = 0, set()
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, name))
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_size
    return total


@dataclass
class RunDetails:
    summary: runs.RunSummary
    config: dict[str, Any]
    source: dict[str, Any]
    eval_loss: float | None
    tokens_per_second: float | None
    duration_seconds: float | None
    checkpoints: list[dict[str, Any]]
    adapter: dict[str, Any] | None
    exports: list[dict[str, Any]]
    eval: dict[str, Any] | None
    size_bytes: int
    train_points: list[tuple[int, float]] = field(default_factory=list)
    eval_points: list[tuple[int, float]] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return self.summary.run_id

    @property
    def locked(self) -> bool:
        return runs.is_locked(self.summary.path)

    def to_dict(self) -> dict[str, Any]:
        """The ``runs show --json`` shape of shared/CLI.md (keys may be added, never renamed)."""
        s = self.summary
        return {
            "id": s.run_id, "path": str(s.path), "status": s.status, "reason": s.reason, "step": s.step,
            "total_steps": s.total_steps, "config": self.config, "source": self.source, "source_spec": s.source,
            "final_loss": s.final_loss, "eval_loss": self.eval_loss, "tokens_per_second": self.tokens_per_second,
            "duration_seconds": self.duration_seconds, "started": s.started, "checkpoints": self.checkpoints,
            "adapter": self.adapter, "exports": self.exports, "eval": self.eval, "size_bytes": self.size_bytes,
        }


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_exports(run_dir: Path) -> list[dict[str, Any]]:
    """The run's exports: the records ``exports.jsonl`` keeps (newest last), then any GGUF under ``export/``
    that no record names (an export from before records were kept, or one copied in by hand)."""
    records: list[dict[str, Any]] = []
    with contextlib.suppress(OSError):
        for line in (run_dir / runs.EXPORTS_FILE).read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if isinstance(doc, dict):
                    records.append(doc)
    for record in records:
        path = record.get("gguf_path") or record.get("adapter_path")
        record["exists"] = bool(path) and Path(path).is_file()
    named = {str(Path(r[k]).resolve()) for r in records for k in ("gguf_path", "adapter_path") if r.get(k)}
    folder = run_dir / EXPORT_DIR
    if folder.is_dir():
        for path in sorted(folder.glob("*.gguf")):
            if str(path.resolve()) not in named:
                with contextlib.suppress(OSError):
                    records.append({"gguf_path": str(path), "type": None, "size_bytes": path.stat().st_size,
                                    "registered_as": None, "verification": None, "exists": True,
                                    "recorded": False})
    return records


def run_details(run_dir: Path) -> RunDetails:
    """Details of one run folder (``runs.find_run`` resolves a RUN argument to one)."""
    if not (run_dir / runs.CONFIG_FILE).is_file():
        raise ConfigError(f"{run_dir} is not a run folder (no {runs.CONFIG_FILE})")
    summary = runs.summarize_run(run_dir)
    events = EventReader(run_dir / runs.EVENTS_FILE).poll()
    train_points, eval_points, speeds = [], [], []
    duration: float | None = None
    for event in events:
        if isinstance(event, StepLogged):
            train_points.append((event.step, event.loss))
            speeds.append(event.tokens_per_second)
            duration = event.elapsed_seconds
        elif isinstance(event, EvalLogged):
            eval_points.append((event.step, event.eval_loss))
        elif isinstance(event, RunFinished):
            duration = event.elapsed_seconds
    config: dict[str, Any] = {}
    with contextlib.suppress(ConfigError):
        from llamaforge_tui.core.train.config import TrainConfig

        config = TrainConfig.from_file(run_dir / runs.CONFIG_FILE).to_dict()
    checkpoints = [{"step": step, "path": str(path), "size_bytes": tree_size(path)}
                   for step, path in complete_checkpoints(run_dir)]
    adapter_dir = run_dir / runs.ADAPTER_DIR
    adapter = ({"path": str(adapter_dir), "size_bytes": tree_size(adapter_dir)} if adapter_dir.is_dir() else None)
    eval_doc = _read_json(run_dir / EVAL_FILE)
    recent = [s for s in speeds[-20:] if s and s > 0]
    return RunDetails(summary=summary, config=config, source=runs.read_source(run_dir),
                      eval_loss=eval_points[-1][1] if eval_points else None,
                      tokens_per_second=sum(recent) / len(recent) if recent else None, duration_seconds=duration,
                      checkpoints=checkpoints, adapter=adapter, exports=read_exports(run_dir),
                      eval=eval_doc if isinstance(eval_doc, dict) else None, size_bytes=tree_size(run_dir),
                      train_points=train_points, eval_points=eval_points)


# -- compare ---------------------------------------------------------------------------------------------------------
def _flatten(doc: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@dataclass
class RunComparison:
    runs: list[RunDetails]
    keys: list[str]  # every config key, in the first run's order, then any others
    values: dict[str, list[Any]]  # key -> one value per run (None where a run lacks it)
    differing: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "runs": [{"id": r.run_id, "path": str(r.summary.path), "status": r.summary.status,
                      "final_loss": r.summary.final_loss, "eval_loss": r.eval_loss,
                      "tokens_per_second": r.tokens_per_second, "duration_seconds": r.duration_seconds,
                      "loss_curve": [list(p) for p in r.train_points],
                      "eval_curve": [list(p) for p in r.eval_points]} for r in self.runs],
            "config": {k: self.values[k] for k in self.keys},
            "differing": self.differing,
        }


def compare_runs(run_dirs: list[Path]) -> RunComparison:
    if len(run_dirs) < 2:
        raise ConfigError("compare needs at least two runs")
    details = [run_details(d) for d in run_dirs]
    flat = [_flatten(d.config) for d in details]
    keys: list[str] = []
    for doc in flat:
        keys += [k for k in doc if k not in keys]
    values = {k: [doc.get(k) for doc in flat] for k in keys}
    differing = [k for k in keys if any(json.dumps(v, sort_keys=True, default=str)
                                        != json.dumps(values[k][0], sort_keys=True, default=str) for v in values[k])]
    return RunComparison(details, keys, values, differing)


def duration_text(seconds: float | None) -> str:
    if seconds is None or seconds != seconds:
        return "-"
    return time.strftime("%H:%M:%S", time.gmtime(seconds)) if seconds >= 3600 else \
        f"{int(seconds) // 60}:{int(seconds) % 60:02d}"


# -- text rows (the CLI prints them; the TUI shows them as plain Text) -------------------------------------------------
def _loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def detail_lines(d: RunDetails) -> list[tuple[str, str]]:
    """(label, text) rows, plain strings, shared by ``runs show`` and the TUI's run details screen."""
    s = d.summary
    rows = [("Run", s.run_id), ("Folder", str(s.path)), ("Status", s.status + (f": {s.reason}" if s.reason else "")),
            ("Step", f"{s.step}/{s.total_steps}"), ("Source", s.source or "-")]
    if d.source.get("weights") or d.config.get("weights"):
        rows.append(("Weights", str(d.source.get("weights") or d.config.get("weights"))))
    rows += [("Train loss", _loss(s.final_loss)), ("Eval loss", _loss(d.eval_loss)),
             ("Tokens/s", "-" if d.tokens_per_second is None else f"{d.tokens_per_second:,.0f}"),
             ("Duration", duration_text(d.duration_seconds)), ("Size", human_bytes(d.size_bytes))]
    rows.append(("Checkpoints", ", ".join(f"step {c['step']} ({human_bytes(c['size_bytes'])})"
                                          for c in d.checkpoints) or "none"))
    rows.append(("Adapter", f"{d.adapter['path']} ({human_bytes(d.adapter['size_bytes'])})" if d.adapter else "none yet"))
    if not d.exports:
        rows.append(("Exports", "none"))
    for e in d.exports:
        path = e.get("gguf_path") or e.get("adapter_path") or "?"
        bits = [f"{e.get('type') or '?'}", human_bytes(e.get("size_bytes"))]
        v = e.get("verification")
        if isinstance(v, dict):
            bits.append(f"verified {'passed' if v.get('passed') else 'FAILED'} (top-1 {v.get('top1_agreement', 0):.1%}, "
                        f"KL {v.get('mean_kl', 0):.2e})")
        else:
            bits.append("not verified")
        bits.append(f"registered as {e['registered_as']}" if e.get("registered_as") else "not registered")
        if not e.get("exists", True):
            bits.append("file gone")
        rows.append(("Export", f"{path}: " + ", ".join(bits)))
    ev = d.eval
    if ev:
        base, tuned = ev.get("base") or {}, ev.get("tuned") or {}
        rows.append(("Eval", f"{ev.get('examples', '?')} examples ({ev.get('split', '?')}): loss "
                             f"{_loss(base.get('loss'))} -> {_loss(tuned.get('loss'))}"))
    else:
        rows.append(("Eval", "not run (llamaforge eval RUN)"))
    keys = ("learning_rate", "lora_r", "lora_alpha", "batch_size", "grad_accum", "max_seq_len", "max_steps", "epochs",
            "seed", "data")
    rows.append(("Config", ", ".join(f"{k}={d.config[k]}" for k in keys if d.config.get(k) is not None) or "-"))
    return rows
