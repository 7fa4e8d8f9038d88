"""`llamaforge train` as a script sees it: library warnings stay off stderr (they go to the log file, and
to stderr only with --debug), and `train --plan` prints the plan without training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.train_models import make_tiny_llama, write_qa_jsonl

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("plan-cli")
    return make_tiny_llama(base / "model"), write_qa_jsonl(base / "qa.jsonl", repeat=2)


def _llamaforge(args: list[str], data_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "LLAMAFORGE_DATA_DIR": str(data_dir),
           "PYTHONWARNINGS": "default"}  # every warning shown once per place, as a user's Python would
    return subprocess.run([sys.executable, "-m", "llamaforge_tui", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300, check=False)


def test_library_warnings_go_to_the_log_file_not_the_terminal_unless_debug(tiny, tmp_path: Path) -> None:  # noqa: ANN001
    model, data = tiny
    run_dir = tmp_path / "run"
    common = ["--lr", "1e-3", "--batch-size", "1", "--dtype", "float32", "--device", "cpu"]
    first = _llamaforge(["train", "--model", str(model), "--data", str(data), "--out", str(run_dir), "--steps", "1",
                         "--json", "--debug", *common], tmp_path / "data")
    assert first.returncode == 0, first.stderr[-2000:]
    assert "FutureWarning" in first.stderr  # the warning this test is about exists, and --debug shows it

    resumed = _llamaforge(["train", "--resume", str(run_dir), "--steps", "2", "--json"], tmp_path / "data")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Warning" not in resumed.stderr and "warnings.warn" not in resumed.stderr, resumed.stderr
    events = [json.loads(line) for line in resumed.stdout.splitlines()]  # stdout is pure JSON lines
    assert events[-1]["type"] == "RunFinished" and events[-1]["step"] == 2
    log = (tmp_path / "data" / "llamaforge.log").read_text(encoding="utf-8")
    assert "FutureWarning" in log and "py.warnings" in log
