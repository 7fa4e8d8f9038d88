"""A run's plan before it starts: steps, the peak memory it will need against what is free, and a rough ETA.

The plan tokenizes the data exactly as the trainer will (same tokenizer, template, truncation, split and
batching), so the steps are the run's steps and the memory estimate follows the largest micro-batch the
run will really see: batches are grouped by length, so that is rarely ``batch_size x max_seq_len``.
Only headers and the tokenizer are read: no weights are loaded and nothing is downloaded.

The ETA is deliberately rough: seconds per step of the latest run of the same model, scaled by the batch;
with no such run it is unknown rather than invented.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamaforge_tui.core.errors import LlamaForgeError
from llamaforge_tui.core.train.config import TrainConfig, pass_tokens_for

if TYPE_CHECKING:
    from llamaforge_tui.core.model.memory import BatchShape, MemoryEstimate
    from llamaforge_tui.core.settings import Settings


@dataclass(frozen=True)
class TrainPlan:
    examples: int | None = None  # training examples after the eval split
    steps_per_epoch: int | None = None
    total_steps: int | None = None
    eta_seconds: float | None = None
    memory: MemoryEstimate | None = None
    batch: BatchShape | None = None  # the largest micro-batch, when the data could be tokenized
    pool: str = "RAM"
    free: int | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    # What the run would train on and in which precision, and why (``device.plan_device``; {"error": ...}).
    target: dict[str, str] = field(default_factory=dict)

    @property
    def fits(self) -> bool | None:
        return self.memory.fits if self.memory is not None else None

    def lines(self) -> list[str]:
        """The plan in words: steps, ETA, memory against free memory, its breakdown, notes (pane and CLI)."""
        from llamaforge_tui.core.fsutil import human_bytes

        from llamaforge_tui.core.train.device import describe_plan

        out = [f"device {describe_plan(self.target)}"] if self.target else []
        if self.examples is not None:
            out.append(f"{self.examples} examples -> {self.steps_per_epoch} steps/epoch, {self.total_steps} steps")
        out.append(f"rough ETA: {_duration(self.eta_seconds)}")
        memory = self.memory
        if memory is not None:
            free = human_bytes(memory.free) if memory.free is not None else "N/A"
            verdict = {True: "fits", False: "WILL NOT FIT", None: "?"}[memory.fits]
            out.append(f"memory ~{human_bytes(memory.total)} vs {free} free {memory.pool}: {verdict}")
            parts = [f"weights {human_bytes(memory.weights)}", f"activations {human_bytes(memory.activations)}",
                     f"head {human_bytes(memory.head)}",
                     f"LoRA+optimizer {human_bytes(memory.lora + memory.optimizer)}"]
            if memory.runtime:
                parts.append(f"runtime {human_bytes(memory.runtime)}")
            if memory.load:
                parts.append(f"GGUF load {human_bytes(memory.load)}")
            out.append(", ".join(parts))
            if self.batch is not None:
                out.append(f"largest batch {self.batch.rows} x {self.batch.width} tokens")
            if memory.fits is False:
                out.extend(str(tip) for tip in memory.advice)
        out.extend(self.notes)
        return out

    def to_json(self) -> dict[str, Any]:
        """``train --plan --json`` (shared/CLI.md): keys may be added, never renamed."""
        memory = self.memory
        return {"steps": self.total_steps, "steps_per_epoch": self.steps_per_epoch,
                "memory_estimate_bytes": memory.total if memory else None,
                "memory_breakdown": memory.breakdown() if memory else None, "fits": self.fits,
                "free_bytes": self.free, "eta_seconds": self.eta_seconds, "examples": self.examples,
                "memory_pool": self.pool, "device": memory.device if memory else self.target.get("device"),
                **{("device_error" if k == "error" else k): v for k, v in self.target.items() if k != "device"},
                "largest_batch": ({"rows": self.batch.rows, "width": self.batch.width,
                                   "labelled_tokens": self.batch.label_rows} if self.batch else None),
                "notes": list(self.notes)}


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "known after the first steps"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


@dataclass
class _Data:
    examples: int | None = None
    batches_per_epoch: int | None = None
    batch: BatchShape | None = None


def plan_run(config: TrainConfig, settings: Settings, *, free: tuple[str, int | None] | None = None,
             tokenizers: dict[tuple[str, str], Any] | None = None) -> TrainPlan:
    """The plan for ``config``. Blocking (tokenizes the dataset); call it from a thread.

    ``free``: (pool name, free bytes) measured by the caller (the TUI's gauges); else measured here for the
    run's device. ``tokenizers``: a cache the caller keeps between plans, keyed by (source, weights).
    """
    notes: list[str] = []
    device = _device(config)
    if free is not None and (free[0] == "VRAM") != device.startswith("cuda"):
        free = None  # the caller measured another pool than the one this run draws from
    data = _Data()
    bundle = None
    if config.model:
        try:
            bundle = _tokenizer(config, settings, tokenizers)
        except LlamaForgeError as exc:
            notes.append(f"tokenizer: {exc}")
    if config.data:
        try:
            data = _measure_data(config, bundle) if bundle is not None else _count_records(config)
        except LlamaForgeError as exc:
            notes.append(f"dataset: {exc}")
    steps_epoch = total = None
    if data.batches_per_epoch is not None:
        per_step = config.grad_accum * max(1, config.nproc)
        steps_epoch = max(1, math.ceil(data.batches_per_epoch / per_step))
        total = config.max_steps or max(1, math.ceil(config.epochs * data.batches_per_epoch / per_step))
    memory = None
    try:
        memory = _memory(config, settings, device, data.batch, free)
    except (LlamaForgeError, OSError, ValueError, KeyError) as exc:
        notes.append(f"memory estimate: {exc}")
    if data.batch is None and memory is not None:
        notes.append(f"memory assumes full batches of {config.batch_size} x {config.max_seq_len} tokens "
                     "(the data could not be tokenized)")
    pool, free_bytes = (memory.pool, memory.free) if memory is not None else (free or ("RAM", None))
    from llamaforge_tui.core.train.device import plan_device

    return TrainPlan(data.examples, steps_epoch, total, eta_from_history(config, settings, total), memory,
                     data.batch, pool, free_bytes, tuple(notes),
                     plan_device(config.device, config.dtype, world_size=config.nproc))


def _device(config: TrainConfig) -> str:
    """The device the trainer will pick (``setup.resolve_device``), as text; no GPU is touched but CUDA's probe."""
    from llamaforge_tui.core.train.setup import resolve_device

    try:
        return str(resolve_device(config.device))
    except LlamaForgeError:
        return config.device


def _tokenizer(config: TrainConfig, settings: Settings, cache: dict[tuple[str, str], Any] | None) -> Any:
    from llamaforge_tui.core.model.loading import load_tokenizer

    weights = "gguf" if config.weights == "gguf-quantized" else config.weights
    key = (config.model, weights)
    if cache is not None and key in cache:
        return cache[key]
    bundle = load_tokenizer(config.model, settings, weights=weights)
    if cache is not None:
        cache.clear()  # one model at a time: a tokenizer can be hundreds of MB
        cache[key] = bundle
    return bundle


def _measure_data(config: TrainConfig, tokenizer_bundle: Any) -> _Data:
    """Encode the data as the trainer does and find its largest micro-batch (rows x padded width)."""
    from llamaforge_tui.core.model.memory import BatchShape
    from llamaforge_tui.core.train.batching import BatchStream, plan_epoch, to_segments
    from llamaforge_tui.core.train.setup import ModelBundle, prepare_data

    b = tokenizer_bundle
    model_bundle = ModelBundle(None, b.tokenizer, b.chat_template, b.architecture, {}, b.ollama_template)
    prepared = prepare_data(config, model_bundle)
    segments = to_segments(prepared.train, config.max_seq_len)
    if not segments:
        raise LlamaForgeError(f"no example has tokens to train on after truncation to {config.max_seq_len}")
    stream = BatchStream(segments, batch_size=config.batch_size, max_seq_len=config.max_seq_len,
                         packing=config.packing, seed=config.seed)
    batches = list(plan_epoch(segments, batch_size=config.batch_size, max_seq_len=config.max_seq_len,
                              packing=config.packing, seed=config.seed, epoch=0))
    batches += plan_epoch(to_segments(prepared.eval, config.max_seq_len), batch_size=config.batch_size,
                          max_seq_len=config.max_seq_len, packing=config.packing, seed=config.seed, epoch=0)
    largest = max(batches, key=lambda b: (len(b.rows) * b.width, b.n_targets))
    shape = BatchShape(len(largest.rows), largest.width, max(b.n_targets for b in batches))
    return _Data(len(segments), stream.batches_per_epoch, shape)


def _count_records(config: TrainConfig) -> _Data:
    """No tokenizer: count the valid records (one example each, one batch per ``batch_size``)."""
    from llamaforge_tui.core.data.dataset import load_dataset

    loaded = load_dataset(config.data, format=config.data_format, policy="skip")
    examples = max(1, int(loaded.valid * (1.0 - config.eval_split)))
    return _Data(examples, math.ceil(examples / config.batch_size), None)


def _memory(config: TrainConfig, settings: Settings, device: str, batch: BatchShape | None,
            free: tuple[str, int | None] | None) -> MemoryEstimate | None:
    """The core estimate from the model's header (GGUF KV or config.json), for the run's precision."""
    from llamaforge_tui.core.model.memory import estimate_memory
    from llamaforge_tui.core.model.sources import resolve_source
    from llamaforge_tui.core.train.loss import max_chunk_rows

    if not config.model:
        return None
    resolved = resolve_source(config.model, settings, config.weights, download=False)
    dtype = _param_dtype(config, device)  # the weights' dtype: the load transient and the estimate both use it
    weights_bytes = None
    load_transient = 0
    if resolved.gguf_path is not None and resolved.uses_gguf:
        from llamaforge_tui.core.gguf.arch import config_dict_from_gguf
        from llamaforge_tui.core.gguf.file import GgufFile

        with GgufFile(resolved.gguf_path) as gguf:
            model_config: Any = config_dict_from_gguf(gguf)
            if config.weights == "gguf-quantized":
                weights_bytes = gguf.tensor_data_bytes
            else:
                # The loader reads one tensor's blocks and dequantizes them; the result becomes the parameter
                # (already counted in the weights). Into fp32 that is all the transient is: measured on Gemma 3
                # 270M Q4_K_M, the load's peak RSS equals its RSS after loading (1,597 against 1,593 MiB). Into a
                # narrower dtype the blocks go through fp32 first, so that copy is the transient too.
                fp32_copy = 0 if str(dtype).endswith("float32") else 4
                load_transient = max((t.n_elements * fp32_copy + t.nbytes for t in gguf.tensors), default=0)
    elif resolved.model_dir is not None:
        model_config = json.loads((Path(resolved.model_dir) / "config.json").read_text(encoding="utf-8"))
        model_config = model_config.get("text_config", model_config) if "hidden_size" not in model_config else model_config
    else:
        return None
    vocab = int(model_config.get("vocab_size") or 0)
    pool, free_bytes = free if free is not None else (None, None)
    batch = _one_pass(batch, pass_tokens_for(config.pass_tokens, device.split(":")[0]))
    return estimate_memory(model_config, dtype=dtype, device=device, batch_size=config.batch_size,
                           seq_len=config.max_seq_len, lora_rank=config.lora_r,
                           lora_targets=tuple(config.target_modules) or _default_targets(),
                           weights_bytes=weights_bytes, gradient_checkpointing=config.gradient_checkpointing,
                           free=free_bytes, pool=pool, batch=batch,
                           head_chunk_rows=max_chunk_rows(vocab, device.split(":")[0]) if vocab else None,
                           load_transient=load_transient, fused=_fused(config, device),
                           recompute=_recompute(config, device),
                           attention_probs=_attention_probs(config, device, batch))


def _one_pass(batch: BatchShape | None, budget: int) -> BatchShape | None:
    """The largest forward pass of a micro-batch that the trainer splits into row groups (``pass_tokens``)."""
    from llamaforge_tui.core.model.memory import BatchShape

    if batch is None or budget <= 0 or batch.rows * batch.width <= budget:
        return batch
    rows = max(1, budget // max(batch.width, 1))
    return BatchShape(rows, batch.width, -(-batch.label_rows * rows // batch.rows))


def _fused(config: TrainConfig, device: str) -> bool:
    from llamaforge_tui.core.train.fused import enabled

    return enabled(config.fused, device.split(":")[0])


def _attention_probs(config: TrainConfig, device: str, batch: BatchShape | None) -> bool:
    """Whether the run's attention keeps its probabilities (the matmul path: asked for, or ``auto`` with layers
    compiled from the start, on a CPU, for rows it takes)."""
    from llamaforge_tui.core.train import attention

    if device.split(":")[0] != "cpu" or config.attention == "sdpa":
        return False
    if config.attention == "auto" and not attention.default_matmul("cpu", compiled=config.compile == "on"):
        return False
    return (batch.width if batch is not None else config.max_seq_len) <= attention.MAX_KEYS


def _recompute(config: TrainConfig, device: str) -> bool:
    from llamaforge_tui.core.train.fused import recompute_enabled

    return recompute_enabled(config.recompute, device.split(":")[0], config.gradient_checkpointing)


def _default_targets() -> tuple[str, ...]:
    from llamaforge_tui.core.model.memory import DEFAULT_LORA_TARGETS

    return DEFAULT_LORA_TARGETS


def _param_dtype(config: TrainConfig, device: str) -> str:
    """The dtype the trainer stores the base weights in (``setup.resolve_precision``)."""
    from llamaforge_tui.core.train.setup import resolve_precision

    try:
        import torch

        return resolve_precision(config.dtype, torch.device(device)).param_dtype
    except (LlamaForgeError, RuntimeError):
        return "float32"


def eta_from_history(config: TrainConfig, settings: Settings, total: int | None) -> float | None:
    """Seconds for ``total`` steps at the pace of the latest run of the same model, scaled by the batch."""
    if not total:
        return None
    from llamaforge_tui.core.train.events import EventReader, RunStarted, StepLogged
    from llamaforge_tui.core.train.runs import list_runs

    for run in list_runs(settings):
        if run.source != config.model or run.step < 2:
            continue
        events = EventReader(run.path).poll()
        steps = [e for e in events if isinstance(e, StepLogged)]
        started = next((e for e in events if isinstance(e, RunStarted)), None)
        if len(steps) < 2:
            continue
        per_step = (steps[-1].elapsed_seconds - steps[0].elapsed_seconds) / max(1, steps[-1].step - steps[0].step)
        if per_step <= 0:
            continue
        old = started.config if started is not None else {}
        old_batch = int(old.get("batch_size", config.batch_size)) * int(old.get("grad_accum", config.grad_accum))
        scale = (config.batch_size * config.grad_accum) / max(1, old_batch)
        return per_step * scale * total
    return None
