"""Run folders: ids, the lock, stop requests and list_runs statuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from llamaforge_tui.core.train import runs
from llamaforge_tui.core.errors import ConfigError
from llamaforge_tui.core.train.events import EventLog, RunFailed, RunFinished, RunStarted, StepLogged
from llamaforge_tui.core.settings import Settings
from llamaforge_tui.core.train.config import TrainConfig


def _run(base: Path, name: str, *events: object) -> Path:
    run_dir = base / name
    run_dir.mkdir(parents=True)
    TrainConfig(model=f"ollama:{name}:1b", data="d.jsonl").to_file(run_dir / runs.CONFIG_FILE)
    with EventLog(run_dir) as log:
        for e in events:
            log.append(e)
    return run_dir


def _started(total: int = 10) -> RunStarted:
    return RunStarted(run_id="x", run_dir="x", config={}, source={}, total_steps=total, trainable_params=1,
                      total_params=2)


def _step(n: int, loss: float) -> StepLogged:
    return StepLogged(step=n, total_steps=10, epoch=0.1, loss=loss, lr=1e-4, grad_norm=1.0, tokens_per_second=1.0,
                      elapsed_seconds=1.0, eta_seconds=1.0)


def test_list_runs_reports_each_status(tmp_path: Path) -> None:
    settings = Settings(runs_dir=str(tmp_path))
    _run(tmp_path, "done", _started(), _step(10, 0.5),
         RunFinished(step=10, total_steps=10, stopped=False, final_loss=0.5, adapter_path="a", elapsed_seconds=1))
    _run(tmp_path, "halted", _started(), _step(3, 0.9),
         RunFinished(step=3, total_steps=10, stopped=True, final_loss=0.9, adapter_path="a", elapsed_seconds=1))
    _run(tmp_path, "broken", _started(), RunFailed(step=4, reason="out of memory at step 4", kind="oom"))
    _run(tmp_path, "crashed", _started(), _step(2, 1.5))
    live = _run(tmp_path, "live", _started(), _step(1, 2.0))
    (tmp_path / "not-a-run").mkdir()
    with runs.RunLock(live):
        got = {r.run_id: r for r in runs.list_runs(settings)}
        assert got["live"].status == "running"
    assert set(got) == {"done", "halted", "broken", "crashed", "live"}
    assert (got["done"].status, got["done"].step, got["done"].final_loss) == ("finished", 10, 0.5)
    assert got["halted"].status == "stopped"
    assert got["broken"].status == "failed" and "out of memory" in got["broken"].reason
    assert (got["crashed"].status, got["crashed"].step, got["crashed"].final_loss) == ("interrupted", 2, 1.5)
    assert got["done"].source == "ollama:done:1b"
    assert {r.run_id: r.status for r in runs.list_runs(settings)}["live"] == "interrupted"  # lock released


def test_lock_is_exclusive_and_stop_requests_round_trip(tmp_path: Path) -> None:
    with runs.RunLock(tmp_path):
        with pytest.raises(ConfigError, match="another process"):
            runs.RunLock(tmp_path).acquire()
    runs.RunLock(tmp_path).acquire()  # free again once released
    assert not runs.stop_requested(tmp_path)
    runs.request_stop(tmp_path)
    assert runs.stop_requested(tmp_path)
    runs.clear_stop(tmp_path)
    assert not runs.stop_requested(tmp_path)


def test_run_ids_and_folders(tmp_path: Path) -> None:
    assert runs.new_run_id("ollama:gemma3:270m", now=0).endswith("-gemma3-270m")
    assert runs.new_run_id("/models/My Model.Q4.gguf", now=0).endswith("-My-Model.Q4")
    settings = Settings(runs_dir=str(tmp_path))
    first = runs.resolve_run_dir(settings, "", "hf:google/gemma-3-270m")
    first.mkdir()
    assert runs.resolve_run_dir(settings, "", "hf:google/gemma-3-270m") != first
    with pytest.raises(ConfigError, match="llamaforge runs"):
        runs.find_run(settings, "nope")
    _run(tmp_path, "r1")
    assert runs.find_run(settings, "r1") == (tmp_path / "r1").resolve()
    assert runs.list_runs(Settings(runs_dir=str(tmp_path / "missing"))) == []
