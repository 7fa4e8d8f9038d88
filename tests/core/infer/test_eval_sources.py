"""Runs from every weight source (a GGUF dequantized, an HF folder, a GGUF kept quantized) are evaluated: the
trainer's end-of-run summary and ``evaluate_run`` agree on base and tuned loss, and the tuned model is better on
what it trained on."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from llamaforge_tui.core.infer.evaluate import evaluate_run, read_eval
from llamaforge_tui.core.settings import Settings
from llamaforge_tui.core.train import trainer
from llamaforge_tui.core.train.config import TrainConfig
from llamaforge_tui.core.train.events import EvalSummary, read_events
from tests.fixtures.tiny_models import session_factory
from tests.fixtures.train_models import one_thread, write_qa_jsonl  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def _source(weights: str) -> str:
    tiny = session_factory().get("llama")
    if weights == "hf":
        return str(tiny.hf_dir)
    return str(tiny.gguf("Q8_0" if weights == "gguf-quantized" else "F32"))


@pytest.mark.parametrize("weights", ["gguf", "hf", "gguf-quantized"])
def test_every_weight_source_is_evaluated(weights: str, tmp_path: Path) -> None:
    data = write_qa_jsonl(tmp_path / "qa.jsonl", repeat=2)
    cfg = TrainConfig(model=_source(weights), data=str(data), weights=weights, max_steps=12, learning_rate=2e-2,
                      batch_size=4, lora_r=8, lora_alpha=16.0, scheduler="constant", warmup_steps=0, save_every=0,
                      dtype="float32", eval_at_end=True, output_dir=str(tmp_path / "run"))
    result = trainer.run(cfg, lambda event: None, threading.Event(), settings=Settings(runs_dir=str(tmp_path)))
    assert result.status == "finished", result.reason
    summary = next(e for e in read_events(result.run_dir) if isinstance(e, EvalSummary))
    assert summary.split == "train" and summary.tuned_loss < summary.base_loss

    evaluated = evaluate_run(result.run_dir, Settings(runs_dir=str(tmp_path)), limit=2)
    assert evaluated.weights == weights and evaluated.split == "train" and evaluated.generated == 2
    assert evaluated.base.loss == pytest.approx(summary.base_loss, rel=1e-4)
    assert evaluated.tuned.loss == pytest.approx(summary.tuned_loss, rel=1e-4)
    assert evaluated.base.exact_match is not None and evaluated.tuned.rouge_l is not None
    assert read_eval(result.run_dir)["tuned"]["loss"] == pytest.approx(summary.tuned_loss, rel=1e-4)
