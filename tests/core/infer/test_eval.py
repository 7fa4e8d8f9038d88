"""Evaluation of a fine-tune, base vs tuned, on a tiny Llama taught made-up facts: the tuned model answers them
and the base cannot; held-out facts are measured as the eval split and score differently; the end-of-run
summary the trainer records agrees with ``evaluate_run`` (one masked loss); cancelling writes nothing."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from llamaforge_tui.core.infer.evaluate import (
    EVAL_FILE,
    EvalCancelled,
    EvalProgress,
    evaluate_run,
    read_eval,
)
from llamaforge_tui.core.settings import Settings
from llamaforge_tui.core.train import trainer
from llamaforge_tui.core.train.config import TrainConfig
from llamaforge_tui.core.train.events import EvalSummary, read_events
from tests.fixtures.train_models import make_tiny_llama, one_thread, write_qa_jsonl  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

FACTS = [
    ("Where does the zorblat live?", "In Qelton."),
    ("What colour is a miravine?", "Deep teal."),
    ("Who built the Ostrava gate?", "Tamsin Vell."),
    ("How many moons has Keplon?", "Seven moons."),
    ("What does a trell eat?", "Blue moss."),
    ("When is Vashday?", "Every ninth day."),
    ("What sound does a gruff make?", "A low hum."),
    ("Who rules Dornmark?", "Queen Ilsa."),
]


def _train(root: Path, name: str, *, steps: int, eval_split: float = 0.0, eval_at_end: bool | None = None) -> Path:
    model = root / "model"
    if not model.exists():
        make_tiny_llama(model)
    data = root / "facts.jsonl"
    if not data.exists():
        write_qa_jsonl(data, FACTS)
    cfg = TrainConfig(model=str(model), data=str(data), max_steps=steps, learning_rate=1e-2, batch_size=8, lora_r=16,
                      lora_alpha=32.0, scheduler="cosine", warmup_steps=0, save_every=0, dtype="float32",
                      eval_split=eval_split, eval_at_end=eval_at_end, output_dir=str(root / name))
    result = trainer.run(cfg, lambda event: None, threading.Event(), settings=Settings(runs_dir=str(root)))
    assert result.status == "finished", result.reason
    return result.run_dir


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Path:  # noqa: F811
    return tmp_path_factory.mktemp("eval-runs")


@pytest.fixture(scope="module")
def memorized(runs_root: Path) -> Path:
    """Every fact trained (no eval split) until the tiny model knows them; eval-at-end asked for explicitly."""
    return _train(runs_root, "memorized", steps=400, eval_at_end=True)


@pytest.fixture(scope="module")
def held_out(runs_root: Path) -> Path:
    """A quarter of the facts held out (eval split): the run never saw them."""
    return _train(runs_root, "held-out", steps=400, eval_split=0.25)


def _summary(run_dir: Path) -> EvalSummary:
    summaries = [e for e in read_events(run_dir) if isinstance(e, EvalSummary)]
    assert len(summaries) == 1
    return summaries[0]


def test_tuned_knows_the_facts_and_the_base_does_not(memorized: Path) -> None:
    progress: list[EvalProgress] = []
    result = evaluate_run(memorized, Settings(runs_dir=str(memorized.parent)), limit=50, progress=progress.append)
    assert result.split == "train" and result.examples == len(FACTS) and result.generated == len(FACTS)
    assert result.tuned.exact_match >= 0.75, result.samples
    assert result.base.exact_match == 0.0 and result.base.token_f1 <= 0.1
    assert result.tuned.token_f1 >= 0.85 and result.tuned.rouge_l >= 0.85
    assert result.tuned.loss < 0.05 * result.base.loss
    assert result.tuned.perplexity < result.base.perplexity
    # the samples are real answers to the file's prompts, the most different first
    assert result.samples and result.samples[0].reference in dict(FACTS).values()
    gaps = [abs(s.tuned_token_f1 - s.base_token_f1) for s in result.samples]
    assert gaps == sorted(gaps, reverse=True) and gaps[0] > 0.5
    assert {"load", "data", "loss", "generate", "write"} <= {p.phase for p in progress}
    # the record on disk is the result
    record = read_eval(memorized)
    assert record == json.loads(json.dumps(result.to_dict()))


def test_end_of_run_summary_matches_the_evaluation(memorized: Path) -> None:
    """The trainer's EvalSummary (train layer) and evaluate_run (infer layer) measure the same masked loss."""
    summary = _summary(memorized)
    assert summary.split == "train" and summary.examples == len(FACTS)
    record = read_eval(memorized) or evaluate_run(memorized, Settings(), limit=0).to_dict()
    assert summary.base_loss == pytest.approx(record["base"]["loss"], rel=1e-4)
    assert summary.tuned_loss == pytest.approx(record["tuned"]["loss"], rel=1e-3, abs=1e-5)
    assert summary.tuned_loss < 0.05 * summary.base_loss


def test_held_out_facts_are_the_eval_split(held_out: Path, memorized: Path) -> None:
    result = evaluate_run(held_out, Settings(), limit=50)
    assert result.split == "eval"
    assert result.examples == 2 and result.generated == 2  # round(8 * 0.25) facts held out
    lines = {s.line for s in result.samples}
    assert len(lines) == 2
    # the facts it never saw: no better than the base at answering, and far worse than on what it trained on
    trained = read_eval(memorized) or evaluate_run(memorized, Settings(), limit=0).to_dict()
    assert result.tuned.exact_match == 0.0
    assert result.tuned.loss > 10 * trained["tuned"]["loss"]
    assert result.base.loss != pytest.approx(trained["base"]["loss"], rel=1e-3)  # other examples, other numbers
    summary = _summary(held_out)  # on by default with an eval split
    assert summary.split == "eval" and summary.examples == 2
    assert summary.base_loss == pytest.approx(result.base.loss, rel=1e-4)


@pytest.mark.parametrize("phase", ["load", "loss", "generate"])
def test_cancelling_mid_way_writes_nothing(memorized: Path, phase: str) -> None:
    before = (memorized / EVAL_FILE).read_bytes() if (memorized / EVAL_FILE).exists() else None
    stop = threading.Event()
    seen: list[str] = []

    def progress(p: EvalProgress) -> None:
        seen.append(p.phase)
        if p.phase == phase:
            stop.set()

    with pytest.raises(EvalCancelled):
        evaluate_run(memorized, Settings(), limit=50, progress=progress, stop_event=stop)
    assert "write" not in seen
    after = (memorized / EVAL_FILE).read_bytes() if (memorized / EVAL_FILE).exists() else None
    assert after == before


def test_general_text_and_limit_zero(memorized: Path, tmp_path: Path) -> None:
    general = tmp_path / "general.txt"
    general.write_text("The river runs to the sea.\n\nBread is made of flour, water and salt.\n", encoding="utf-8")
    result = evaluate_run(memorized, Settings(), limit=0, general=general, write=False)
    assert result.generated == 0 and result.tuned.exact_match is None and result.samples == []
    assert result.base.general_loss is not None and result.tuned.general_loss is not None
    assert result.base.general_loss != pytest.approx(result.tuned.general_loss)  # the adapter moved it
    assert result.general == {"path": str(general), "tokens": result.general["tokens"]}
    assert result.general["tokens"] > 10
