"""DDP on torch's own engine: `llamaforge train --nproc 2` (torchrun, gloo, 2 CPU processes) follows the
single-process loss curve with the same global batch, stops on Ctrl-C at the same step on every rank, and
resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from llamaforge_tui.core.train import checkpoint as ckpt
from llamaforge_tui.core.train import runs
from llamaforge_tui.core.train import trainer
from llamaforge_tui.core.train.events import StepLogged
from llamaforge_tui.core.settings import Settings
from llamaforge_tui.core.train.config import TrainConfig
from tests.fixtures.train_models import make_tiny_llama, one_thread, write_qa_jsonl  # noqa: F401

ROOT = Path(__file__).resolve().parents[3]
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
COMMON = {"learning_rate": 1e-2, "batch_size": 1, "dtype": "float32", "packing": False, "scheduler": "constant",
          "warmup_steps": 0, "save_every": 0, "log_every": 1, "lora_r": 8, "lora_alpha": 16.0, "device": "cpu"}


def _cli(args: list[str], **kw: object) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "llamaforge_tui", *args], env=env, cwd=ROOT, text=True, **kw)


def _steps(lines: list[str]) -> dict[int, float]:
    events = [json.loads(x) for x in lines if x.startswith("{")]
    return {e["step"]: e["loss"] for e in events if e["type"] == "StepLogged"}


def test_two_gloo_processes_match_one_and_stop_resume_works(tmp_path: Path) -> None:
    import psutil

    model, data = make_tiny_llama(tmp_path / "model"), write_qa_jsonl(tmp_path / "qa.jsonl", repeat=2)
    reference: dict[int, float] = {}
    cfg = TrainConfig(model=str(model), data=str(data), max_steps=8, grad_accum=2, output_dir=str(tmp_path / "one"),
                      **COMMON)
    trainer.run(cfg, lambda e: reference.update({e.step: e.loss}) if isinstance(e, StepLogged) else None,
                threading.Event(), settings=Settings(runs_dir=str(tmp_path)))
    assert len(reference) == 8

    run_dir = tmp_path / "ddp"
    args = ["train", "--model", str(model), "--data", str(data), "--out", str(run_dir), "--json", "--nproc", "2",
            "--grad-accum", "1", "--steps", "100000", "--lr", "1e-2", "--batch-size", "1", "--dtype", "float32",
            "--no-packing", "--scheduler", "constant", "--warmup-steps", "0", "--save-every", "0",
            "--lora-r", "8", "--lora-alpha", "16", "--device", "cpu"]
    launcher = _cli(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = launcher.stdout.readline()
        assert line, launcher.stderr.read()[-3000:]
        first.append(line)
        if '"StepLogged"' in line:
            break
    # freeze the workers, press Ctrl-C in the launcher (it asks the run to stop), let them go on
    workers = psutil.Process(launcher.pid).children(recursive=True)
    for p in workers:
        p.send_signal(signal.SIGSTOP)
    launcher.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 10
    while not runs.stop_requested(run_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    for p in workers:
        p.send_signal(signal.SIGCONT)
    out, err = launcher.communicate(timeout=120)
    assert launcher.returncode == 0, err[-3000:]
    first += out.splitlines()
    finished = [json.loads(x) for x in first if '"RunFinished"' in x]
    assert len(finished) == 1 and finished[0]["stopped"] is True  # one writer: rank 0
    stop_step = finished[0]["step"]
    assert 1 <= stop_step < 8
    assert ckpt.latest_checkpoint(run_dir).name == f"step-{stop_step}"
    started = json.loads(next(x for x in first if '"RunStarted"' in x))
    assert started["world_size"] == 2

    resume = _cli(["train", "--resume", str(run_dir), "--steps", "8", "--json"], stdout=subprocess.PIPE,
                  stderr=subprocess.PIPE)
    out2, err2 = resume.communicate(timeout=180)
    assert resume.returncode == 0, err2[-3000:]
    curve = {**_steps(first), **_steps(out2.splitlines())}
    assert sorted(curve) == list(range(1, 9))
    for step, loss in reference.items():
        assert curve[step] == pytest.approx(loss, rel=1e-5), step
    summary = runs.summarize_run(run_dir)
    assert (summary.status, summary.step) == ("finished", 8)
    events = (run_dir / "events.jsonl").read_text().splitlines()
    assert sum('"RunStarted"' in x for x in events) == 2  # rank 1 never wrote events
