"""`llamaforge train` / `llamaforge runs` as a user runs them: JSON events, Ctrl-C stops with a
checkpoint, SIGKILL loses only the steps since the last checkpoint, resume continues, errors are one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llamaforge_tui import cli
from llamaforge_tui.core.train import checkpoint as ckpt
from llamaforge_tui.core.train import runs
from llamaforge_tui.core.settings import Settings
from tests.fixtures.train_models import make_tiny_llama, one_thread, write_qa_jsonl  # noqa: F401

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("cli")
    return make_tiny_llama(base / "model"), write_qa_jsonl(base / "qa.jsonl", repeat=2)


def _start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "llamaforge_tui", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def _read_until(proc: subprocess.Popen, want: callable, timeout: float = 120) -> list[dict]:
    """JSON event lines from the child's stdout, up to and including the first one ``want`` accepts."""
    seen: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"child ended early: {proc.stderr.read()[-2000:]}")
        seen.append(json.loads(line))
        if want(seen[-1]):
            return seen
    raise AssertionError("timed out waiting for the child")


def _train_args(tiny: tuple[Path, Path], out: Path, *extra: str) -> list[str]:
    return ["train", "--model", str(tiny[0]), "--data", str(tiny[1]), "--out", str(out), "--json",
            "--lr", "1e-3", "--batch-size", "1", "--dtype", "float32", "--no-packing", *extra]


def test_sigint_stops_with_a_checkpoint_then_sigkill_loses_only_unsaved_steps(tiny, tmp_path: Path) -> None:  # noqa: ANN001
    run_dir = tmp_path / "run"
    proc = _start(_train_args(tiny, run_dir, "--steps", "100000", "--save-every", "1000"))
    _read_until(proc, lambda e: e["type"] == "StepLogged" and e["step"] >= 2)
    # freeze it, note the last step it finished, press Ctrl-C, let it go on
    proc.send_signal(signal.SIGSTOP)
    import psutil

    while psutil.Process(proc.pid).status() != psutil.STATUS_STOPPED:
        time.sleep(0.01)
    logged = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
    last_done = max(e["step"] for e in logged if e["type"] == "StepLogged")
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGCONT)
    rest = [json.loads(line) for line in proc.stdout.read().splitlines()]
    assert proc.wait(timeout=60) == 0
    finished = [e for e in rest if e["type"] == "RunFinished"]
    assert finished and finished[0]["stopped"] is True
    stop_step = finished[0]["step"]
    steps_after = [e["step"] for e in rest if e["type"] == "StepLogged"]
    assert all(s <= stop_step for s in steps_after)
    assert last_done <= stop_step <= last_done + 1  # honoured within one optimizer step
    assert ckpt.latest_checkpoint(run_dir).name == f"step-{stop_step}"
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()

    # resume it, checkpointing every 2 steps, and kill -9 it mid-run
    proc = _start(["train", "--resume", str(run_dir), "--json", "--save-every", "2"])
    seen = _read_until(proc, lambda e: e["type"] == "CheckpointSaved" and e["step"] >= stop_step + 4)
    assert seen[0]["type"] == "LogLine" or seen[0]["type"] == "RunStarted"
    started = next(e for e in seen if e["type"] == "RunStarted")
    assert started["resumed_from_step"] == stop_step
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    proc.stderr.close()
    last_saved = max(e["step"] for e in seen if e["type"] == "CheckpointSaved")
    summary = runs.summarize_run(run_dir)
    assert summary.status == "interrupted"
    latest = ckpt.latest_checkpoint(run_dir)
    assert int(latest.name.split("-")[1]) >= last_saved  # nothing saved was lost
    # a half-written checkpoint (what a kill during the save leaves) is never picked up
    partial = run_dir / "checkpoints" / f".tmp-step-{last_saved + 100}-1"
    (partial / "adapter").mkdir(parents=True)
    (partial / "trainer_state.json").write_text("{")
    resumed_at = int(latest.name.split("-")[1])
    assert cli.main(["train", "--resume", str(run_dir), "--steps", str(resumed_at + 2), "--json"]) == 0
    summary = runs.summarize_run(run_dir)
    assert (summary.status, summary.step) == ("finished", resumed_at + 2)
    assert not partial.exists()
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert [e["resumed_from_step"] for e in events if e["type"] == "RunStarted"] == [0, stop_step, resumed_at]


def test_progress_lines_runs_listing_and_one_line_errors(tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "runs" / "first"
    args = _train_args(tiny, out, "--steps", "2", "--log-every", "1")
    args.remove("--json")
    assert cli.main(args) == 0
    text = capsys.readouterr().out
    assert "step 1/2" in text and "step 2/2" in text and "loss" in text and "tok/s" in text
    assert "finished at step 2/2" in text
    settings_runs = Settings(runs_dir=str(tmp_path / "runs"))
    assert [r.run_id for r in runs.list_runs(settings_runs)] == ["first"]
    monkeypatch.setenv("LLAMAFORGE_CONFIG_DIR", str(tmp_path / "cfg"))
    settings_runs.save()
    assert cli.main(["runs", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed[0]["run_id"] == "first" and listed[0]["status"] == "finished" and listed[0]["step"] == 2

    assert cli.main(["train", "--model", str(tiny[0])]) == 1
    assert capsys.readouterr().err.strip() == "error: no dataset: give --data FILE (or 'data' in the config file)"
    bad = tmp_path / "bad.toml"
    bad.write_text("lora_rank = 8\n")
    assert cli.main(["train", "--config", str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown key(s) lora_rank" in err[0]
    assert cli.main(["train", "--resume", str(tmp_path / "nothing")]) == 1
    assert "no run at" in capsys.readouterr().err
