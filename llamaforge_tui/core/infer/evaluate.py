"""Did the fine-tune take? Base vs tuned on a run's own held-out data, with one model in memory.

``evaluate_run(run, ...)`` loads the run's base with its adapter once (:class:`RunSession`) and measures, with the
adapter switched off (the base) and on (the tuned model):

- **loss and perplexity** on the assistant tokens only, masked, batched and summed exactly as training measured
  its eval loss (``core.train.eval_loss``), on the run's eval split; a run trained without one is measured on its
  training data and labelled ``split: "train"``, since that shows memorization, not generalization;
- **generation scores**: greedy answers to the first ``limit`` prompts of that split, scored against the
  reference replies by exact match, token F1 and ROUGE-L (``core.infer.metrics``);
- optionally, a **forgetting check**: the same loss on a general-text file (``--general``); a fine-tune that
  raised it has moved the base's general ability;
- **samples**: the examples whose base and tuned answers differ most in score.

A blocking call with a progress callback and a stop event, like the trainer: setting the event ends it between
batches or between tokens, with :class:`EvalCancelled` and nothing written. A finished evaluation is written
atomically to ``RUN/eval.json`` (the same object ``llamaforge eval --json`` prints; shape in ``shared/CLI.md``).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamaforge_tui.core.errors import LlamaForgeError
from llamaforge_tui.core.fsutil import atomic_write_text
from llamaforge_tui.core.infer.metrics import AnswerScores, mean_scores, score_answer

if TYPE_CHECKING:
    from llamaforge_tui.core.infer.run_data import ChatExample
    from llamaforge_tui.core.infer.session import RunSession
    from llamaforge_tui.core.settings import Settings
    from llamaforge_tui.core.train.eval_loss import LossTotals

EVAL_FILE = "eval.json"
DEFAULT_LIMIT = 50
DEFAULT_SAMPLES = 5
# Longest greedy answer: twice the reference's tokens plus a margin (an answer that runs past that is wrong
# anyway, and an untuned base would otherwise ramble to this cap on every prompt), never more than this.
MAX_NEW_TOKENS = 512
PROGRESS_INTERVAL = 0.2  # seconds between progress reports within a phase
METRICS = ("loss", "perplexity", "exact_match", "token_f1", "rouge_l", "general_loss", "general_perplexity")
# Where the default general-text sample lives: assets/ of the source tree (next to the package).
GENERAL_SAMPLE = Path(__file__).resolve().parents[3] / "assets" / "general_sample.txt"


class EvalError(LlamaForgeError):
    """An evaluation cannot run: bad options, nothing to evaluate."""


class EvalCancelled(LlamaForgeError):
    """The stop event was set: the evaluation ended early and wrote nothing."""


@dataclass(frozen=True)
class EvalProgress:
    """``phase``: load | data | loss | generate | general | write. ``done``/``total``: units of the phase
    (batches, examples); ``total`` 0 while unknown."""

    phase: str
    done: int
    total: int
    message: str
    elapsed: float = 0.0


@dataclass
class SideScores:
    """One side (base or tuned). Generation scores are None when nothing was generated (``--limit 0``, a
    text dataset); the general scores when no general file was given."""

    loss: float | None = None
    perplexity: float | None = None
    exact_match: float | None = None
    token_f1: float | None = None
    rouge_l: float | None = None
    general_loss: float | None = None
    general_perplexity: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        return {name: _finite(getattr(self, name)) for name in METRICS}


@dataclass(frozen=True)
class Sample:
    prompt: str
    reference: str
    base: str
    tuned: str
    line: int = 0
    base_token_f1: float = 0.0
    tuned_token_f1: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "reference": self.reference, "base": self.base, "tuned": self.tuned,
                "line": self.line, "base_token_f1": round(self.base_token_f1, 4),
                "tuned_token_f1": round(self.tuned_token_f1, 4)}


@dataclass
class EvalResult:
    run: str  # the run id
    path: str
    split: str  # "eval" | "train"
    examples: int  # examples measured for loss and perplexity
    base: SideScores
    tuned: SideScores
    samples: list[Sample] = field(default_factory=list)
    generated: int = 0  # prompts answered by both sides (<= limit)
    skipped: int = 0  # prompts too long for the model's context
    limit: int = DEFAULT_LIMIT
    loss_tokens: int = 0
    general: dict[str, Any] | None = None  # {path, tokens}
    adapter: str = ""  # "final adapter" or "checkpoint step-N"
    source: str = ""
    weights: str = ""
    created: float = 0.0
    elapsed_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"run": self.run, "path": self.path, "split": self.split, "examples": self.examples,
                "base": self.base.to_dict(), "tuned": self.tuned.to_dict(),
                "samples": [s.to_dict() for s in self.samples], "generated": self.generated,
                "skipped": self.skipped, "limit": self.limit, "loss_tokens": self.loss_tokens,
                "general": self.general, "adapter": self.adapter, "source": self.source, "weights": self.weights,
                "created": self.created, "elapsed_seconds": round(self.elapsed_seconds, 3)}


def _finite(value: float | None) -> float | None:
    """JSON has no infinity: a perplexity past float range is reported as null (its loss is still there)."""
    return value if value is None or math.isfinite(value) else None


class _Reporter:
    """Throttles progress: at most one report per PROGRESS_INTERVAL within a phase; phase changes and ends at once."""

    def __init__(self, progress: Callable[[EvalProgress], None] | None) -> None:
        self.progress = progress
        self.start = time.monotonic()
        self._last = (-math.inf, "")

    def __call__(self, phase: str, done: int, total: int, message: str) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if phase == self._last[1] and done < total and now - self._last[0] < PROGRESS_INTERVAL:
            return
        self._last = (now, phase)
        self.progress(EvalProgress(phase, done, total, message, now - self.start))


def default_general_sample() -> Path:
    if not GENERAL_SAMPLE.is_file():
        raise EvalError(f"the default general-text sample is not installed ({GENERAL_SAMPLE}); pass a file: "
                        "--general FILE")
    return GENERAL_SAMPLE


def evaluate_run(run: str | Path, settings: Settings | None = None, *, limit: int = DEFAULT_LIMIT,
                 general: str | Path | None = None, samples: int = DEFAULT_SAMPLES, device: str = "auto",
                 dtype: str = "run", progress: Callable[[EvalProgress], None] | None = None,
                 stop_event: threading.Event | None = None, session: RunSession | None = None,
                 write: bool = True) -> EvalResult:
    """Evaluate ``run`` (a run folder or a run id) base vs tuned; write ``RUN/eval.json`` unless ``write`` is
    False. ``session``: an already open session of this run (it is left open); otherwise one is opened and
    closed here. ``dtype`` "run": the precision the run trained in. Raises :class:`EvalCancelled` when
    ``stop_event`` is set."""
    if limit < 0:
        raise EvalError(f"--limit must be 0 or more, got {limit}")
    general_path = Path(general).expanduser() if general else None
    if general_path is not None and not general_path.is_file():
        raise EvalError(f"general-text file {general_path} not found")
    stop_event = stop_event or threading.Event()
    report = _Reporter(progress)
    started = time.monotonic()
    own = session is None
    if session is None:
        from llamaforge_tui.core.infer.session import RunSession
        from llamaforge_tui.core.settings import Settings as _Settings
        from llamaforge_tui.core.train import runs

        settings = settings or _Settings()
        run = runs.find_run(settings, run)  # a bad RUN fails here, before anything is loaded
        if dtype == "run":
            dtype = _training_dtype(run, device)
        report("load", 0, 0, f"loading {run.name}")
        try:
            session = RunSession.open(run, settings, device=device, dtype=dtype, stop_event=stop_event,
                                      progress=lambda message: report("load", 0, 0, message))
        except LlamaForgeError:
            if stop_event.is_set():  # the loader stops early on the event and says so in its own words
                raise EvalCancelled("evaluation cancelled") from None
            raise
    try:
        result = _evaluate(session, limit, general_path, samples, report, stop_event)
    finally:
        if own:
            session.close()
    result.elapsed_seconds = time.monotonic() - started
    if write:
        report("write", 0, 0, f"writing {session.run_dir / EVAL_FILE}")
        write_eval(session.run_dir, result)
    return result


def _training_dtype(run_dir: Path, device: str) -> str:
    """The dtype the run's weights were trained in (its config's ``dtype``, resolved for ``device``)."""
    from llamaforge_tui.core.train import runs
    from llamaforge_tui.core.train.config import TrainConfig
    from llamaforge_tui.core.train.setup import resolve_device, resolve_precision

    config = TrainConfig.from_file(run_dir / runs.CONFIG_FILE)
    return resolve_precision(config.dtype, resolve_device(device)).param_dtype


def _evaluate(session: RunSession, limit: int, general: Path | None, n_samples: int, report: _Reporter,
              stop_event: threading.Event) -> EvalResult:
    from llamaforge_tui.core.infer.run_data import find_adapter, run_examples

    config = session.config
    report("data", 0, 0, f"encoding {config.data} as training did")
    data = session.prepared_data()
    split = "eval" if data.eval else "train"
    examples = data.eval or data.train
    base_loss, tuned_loss = _loss_pair(session, examples, "loss", f"{split} split", report, stop_event)
    base, tuned = SideScores(), SideScores()
    base.loss, base.perplexity = base_loss.mean, base_loss.perplexity
    tuned.loss, tuned.perplexity = tuned_loss.mean, tuned_loss.perplexity

    eval_lines = {ex.line for ex in data.eval} if data.eval else None
    _, prompts = run_examples(config, limit=limit, eval_lines=eval_lines) if limit else ("", [])
    pairs, skipped = _generate(session, prompts, report, stop_event)
    for side, index in ((base, 0), (tuned, 1)):
        mean = mean_scores([p[index + 2] for p in pairs])
        if mean is not None:
            side.exact_match, side.token_f1, side.rouge_l = mean.exact_match, mean.token_f1, mean.rouge_l

    general_info = None
    if general is not None:
        from llamaforge_tui.core.data.dataset import prepare_dataset

        report("general", 0, 0, f"encoding {general}")
        text = prepare_dataset(general, session.tokenizer, session.template, max_seq_len=config.max_seq_len)
        g_base, g_tuned = _loss_pair(session, text.train, "general", general.name, report, stop_event)
        base.general_loss, base.general_perplexity = g_base.mean, g_base.perplexity
        tuned.general_loss, tuned.general_perplexity = g_tuned.mean, g_tuned.perplexity
        general_info = {"path": str(general), "tokens": g_base.tokens}

    source = config.model
    return EvalResult(run=session.run_dir.name, path=str(session.run_dir), split=split, examples=len(examples),
                      base=base, tuned=tuned, samples=_pick_samples(pairs, n_samples), generated=len(pairs),
                      skipped=skipped, limit=limit, loss_tokens=tuned_loss.tokens, general=general_info,
                      adapter=find_adapter(session.run_dir)[1], source=source, weights=config.weights,
                      created=time.time())


def _loss_pair(session: RunSession, examples: list[Any], phase: str, what: str, report: _Reporter,
               stop_event: threading.Event) -> tuple[LossTotals, LossTotals]:
    """(base, tuned) masked loss over ``examples``: the adapter off, then on; the same batches for both."""
    from llamaforge_tui.core.train.eval_loss import eval_batches, masked_loss
    from llamaforge_tui.core.train.loss import loss_module

    config = session.config
    batches = eval_batches(examples, batch_size=config.batch_size, max_seq_len=config.max_seq_len,
                           packing=config.packing, seed=config.seed)
    loss_fn = loss_module(session.model.get_base_model())
    device, autocast = _device_and_autocast(session.model)
    pad_id = session.tokenizer.pad_token_id or 0
    out = []
    for side in ("base", "tuned"):
        def on_batch(done: int, total: int, side: str = side) -> None:
            report(phase, done, total, f"{side} loss on the {what}: batch {done}/{total}")

        if side == "base":
            with session.adapter_disabled():
                totals = masked_loss(loss_fn, batches, device, pad_id, autocast=autocast, stop_event=stop_event,
                                     on_batch=on_batch)
        else:
            totals = masked_loss(loss_fn, batches, device, pad_id, autocast=autocast, stop_event=stop_event,
                                 on_batch=on_batch)
        if not totals.complete:
            raise EvalCancelled("evaluation cancelled")
        out.append(totals)
    return out[0], out[1]


def _device_and_autocast(model: Any) -> tuple[Any, Callable[[], Any] | None]:
    """The model's device, and bf16/fp16 autocast when its weights are stored so (as training ran them)."""
    import torch

    param = next(iter(model.parameters()), None)
    if param is None:
        return torch.device("cpu"), None
    dtypes = {p.dtype for p in model.parameters()}
    low = next((d for d in (torch.bfloat16, torch.float16) if d in dtypes), None)
    if low is None:
        return param.device, None
    return param.device, lambda: torch.autocast(param.device.type, dtype=low)


def _answer_budget(session: RunSession, reference: str) -> int:
    ref_tokens = len(session.tokenizer(reference, add_special_tokens=False)["input_ids"])
    return min(MAX_NEW_TOKENS, 2 * ref_tokens + 16)


def _generate(session: RunSession, prompts: list[ChatExample], report: _Reporter,
              stop_event: threading.Event) -> tuple[list[tuple[ChatExample, tuple[str, str], AnswerScores,
                                                               AnswerScores]], int]:
    """Greedy base and tuned answers to each prompt, scored. Prompts too long for the context are skipped."""
    from llamaforge_tui.core.infer.generation import ChatError

    pairs = []
    skipped = 0
    for i, example in enumerate(prompts):
        report("generate", i, len(prompts), f"answering {i + 1}/{len(prompts)} (base and tuned)")
        budget = _answer_budget(session, example.reference)
        messages = [dict(m) for m in example.messages]
        try:
            with session.adapter_disabled():
                base = session.generate(messages, max_tokens=budget, temperature=0.0, stop_event=stop_event)
            tuned = session.generate(messages, max_tokens=budget, temperature=0.0, stop_event=stop_event)
        except ChatError as exc:
            skipped += 1
            report("generate", i + 1, len(prompts), f"skipped line {example.line}: {exc}")
            continue
        if "cancelled" in (base.finish, tuned.finish) or stop_event.is_set():
            raise EvalCancelled("evaluation cancelled")
        texts = (base.text.strip(), tuned.text.strip())
        pairs.append((example, texts, score_answer(texts[0], example.reference),
                      score_answer(texts[1], example.reference)))
    report("generate", len(prompts), len(prompts), f"answered {len(pairs)} prompt(s)")
    return pairs, skipped


def _pick_samples(pairs: list[tuple[ChatExample, tuple[str, str], AnswerScores, AnswerScores]],
                  n: int) -> list[Sample]:
    """The examples where base and tuned differ most: by token-F1 gap, then ROUGE-L gap, then whether the
    texts differ at all; file order breaks ties."""
    def gap(pair: tuple[Any, tuple[str, str], AnswerScores, AnswerScores]) -> tuple[float, float, bool]:
        _, texts, b, t = pair
        return abs(t.token_f1 - b.token_f1), abs(t.rouge_l - b.rouge_l), texts[0] != texts[1]

    ranked = sorted(pairs, key=gap, reverse=True)[:max(0, n)]
    return [Sample(prompt=ex.prompt, reference=ex.reference, base=texts[0], tuned=texts[1], line=ex.line,
                   base_token_f1=b.token_f1, tuned_token_f1=t.token_f1) for ex, texts, b, t in ranked]


# -- the record ------------------------------------------------------------------------------------------------
def write_eval(run_dir: Path | str, result: EvalResult) -> Path:
    path = Path(run_dir) / EVAL_FILE
    atomic_write_text(path, json.dumps(result.to_dict(), indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    return path


def read_eval(run_dir: Path | str) -> dict[str, Any] | None:
    """``RUN/eval.json`` as written by :func:`write_eval`; None when there is none or it cannot be read."""
    try:
        data = json.loads((Path(run_dir) / EVAL_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("base"), dict) or not isinstance(data.get("tuned"), dict):
        return None
    return data
