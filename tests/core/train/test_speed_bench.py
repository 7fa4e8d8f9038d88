"""benchmarks/bench_train.py: the GPU suite runs end to end on a tiny shape (--smoke), so the one-command GPU
run cannot break on a typo, and its table keeps going when a variant fails."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "benchmarks"))

import _bench_suite as suite


def test_synthetic_examples_are_learnable_and_deterministic() -> None:
    a = suite.synthetic_examples(20, 128, 4096, seed=3)
    b = suite.synthetic_examples(20, 128, 4096, seed=3)
    assert [x.input_ids for x in a] == [x.input_ids for x in b]
    for ex in a:
        assert 16 <= len(ex.input_ids) <= 128 and len(ex.labels) == len(ex.input_ids)
        first = next(i for i, t in enumerate(ex.labels) if t != -100)
        motif = ex.input_ids[first - 8:first]
        answer = ex.input_ids[first:]
        assert answer == (motif * 20)[:len(answer)]  # the answer repeats the prompt's last 8 tokens
        assert max(ex.input_ids) < 4096


def test_steady_rate_and_last_quarter() -> None:
    times = [10.0, 11.0, 12.0, 13.0, 14.0, 15.0, 16.0, 17.0]  # first step slow (compile), then 1 s each
    assert suite.steady(times, [100] * 8) == pytest.approx(100.0)
    assert suite.last_quarter([4.0, 3.0, 2.0, 1.0, 1.0, 3.0, 5.0, 7.0]) == pytest.approx(6.0)


def test_table_shows_failed_variants_and_ratios(capsys: pytest.CaptureFixture[str]) -> None:
    ok = {"ok": True, "steps": 4, "tokens_per_second": 100.0, "steady_tokens_per_second": 120.0,
          "peak_memory": 2**30, "final_loss": 2.0, "notes": []}
    rows = [{**ok, "group": "g", "variant": "baseline", "ref": True},
            {**ok, "group": "g", "variant": "ours", "tokens_per_second": 250.0, "steady_tokens_per_second": 240.0,
             "peak_memory": 2**29, "final_loss": 2.02, "notes": ["compile: 18 decoder layers"]},
            {"group": "g", "variant": "ours-eager", "ok": False, "error": "RuntimeError: no kernel image"}]
    suite.print_table(rows, "peak CUDA")
    out = capsys.readouterr().out
    assert "2.50" in out and "2.00" in out and "0.50" in out and "+1.0%" in out
    assert "FAILED: RuntimeError: no kernel image" in out and "compile: 18 decoder layers" in out


def test_table_compares_the_end_loss_of_the_trained_models(capsys: pytest.CaptureFixture[str]) -> None:
    """The quality check that does not depend on batch order: each trained model's loss over every example."""
    ok = {"ok": True, "steps": 4, "tokens_per_second": 100.0, "steady_tokens_per_second": 120.0,
          "peak_memory": 2**30, "final_loss": 2.0, "notes": []}
    suite.print_table([{**ok, "group": "g", "variant": "baseline", "ref": True, "end_loss": 1.5},
                       {**ok, "group": "g", "variant": "ours", "end_loss": 1.53}], "peak RSS")
    out = capsys.readouterr().out
    assert "end loss" in out and "1.5300" in out and "+2.0%" in out


@pytest.mark.slow
def test_gpu_suite_smoke_runs_every_variant() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_train.py"), "--smoke", "--verbose"],
                          capture_output=True, text=True, timeout=900, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for variant in ("baseline", "ours", "ours-eager"):
        assert f"tiny        {variant}" in proc.stdout
    assert "FAILED" not in proc.stdout
    assert "bf16 matmul ceiling" in proc.stdout


def _child_result(variant: str) -> dict:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_train.py"), "--variant", variant,
                           "--shape", "tiny", "--model", "synthetic", "--data", "synthetic", "--dtype", "float32",
                           "--examples", "32", "--batch", "4", "--max-seq-len", "128", "--lr", "2e-3"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT, check=False)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, proc.stderr[-3000:]
    return json.loads(line[len("RESULT "):])


def test_the_baseline_takes_our_steps_on_our_batches() -> None:
    """The quality comparison is fair: ``baseline`` is Trainer + peft fed our epoch's batches in our order, so in
    fp32 its loss at every step equals ours (same LoRA init, same maths); ``baseline-random`` (Trainer's own
    sampler) takes other steps."""
    ours, baseline, shuffled = (_child_result(v) for v in ("ours", "baseline", "baseline-random"))
    assert len(ours["losses"]) == len(baseline["losses"]) == len(shuffled["losses"]) == 8
    assert baseline["losses"] == pytest.approx(ours["losses"], rel=1e-5)
    assert baseline["final_loss"] == pytest.approx(ours["final_loss"], rel=1e-5)
    assert baseline["end_loss"] == pytest.approx(ours["end_loss"], rel=1e-5)
    assert shuffled["losses"] != pytest.approx(ours["losses"], rel=1e-3)
