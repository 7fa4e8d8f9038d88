"""Estimate the memory a load or a training run needs, before doing it, and say what to change if it won't fit.

Dying halfway through a run with an out-of-memory error (or getting the whole machine swapping) is the worst
outcome for an interactive tool, so the numbers are computed from the model's header and the data's token
lengths alone. The figure is the peak of the training process: CPU RSS on the CPU, ``max_memory_allocated``
on CUDA. Its parts, fitted to measured peaks (``benchmarks/bench_memory.py``):

- weights: parameter count x dtype size (or the GGUF's own bytes when kept quantized);
- LoRA: per adapted linear layer ``r x (in + out)`` parameters, trained in fp32;
- optimizer: AdamW keeps two fp32 moments per trainable parameter, plus the fp32 gradient;
- activations: what the forward pass saves for backward, per layer and *real* token of the largest
  micro-batch. Batches are grouped by length (or packed), so that is the data's longest batch, padded to its
  own longest row, not ``batch_size x max_seq_len``. Norms compute in fp32 whatever the dtype; the rest is
  saved in the compute dtype. Attention is a fused kernel: nothing quadratic in the length is kept;
- head: the output layer runs only at labelled positions, a chunk of rows at a time (``core.train.loss``), so
  its logits cost one chunk (and its softmax temporaries), not ``tokens x vocab``;
- runtime: the interpreter, torch, transformers and the tokenizer (CPU RSS only: CUDA's context is outside
  ``max_memory_allocated``, and is added for the fit check instead);
- load: loading a GGUF dequantizes one tensor at a time in fp32; when that transient outgrows the training
  step's own needs (small batches, big vocabularies), it sets the peak.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import psutil

from llamaforge_tui.core.errors import LlamaForgeError
from llamaforge_tui.core.fsutil import human_bytes

if TYPE_CHECKING:
    import torch

GIB = 1024**3
MIB = 1024**2
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Fitted to measured peaks (benchmarks/bench_memory.py); the margin keeps the estimate a guard, on the high side.
SAFETY_MARGIN = 1.05
CPU_RUNTIME = 450 * MIB  # python + torch + transformers + peft, resident after the imports and the first step
TOKENIZER_BYTES_PER_TOKEN = 800  # a fast tokenizer's vocab and merges, resident
CUDA_CONTEXT = 600 * MIB  # the CUDA context and cuBLAS workspaces: outside max_memory_allocated, but in the VRAM
# Floats the forward pass keeps per token and layer: fp32 (norms) and compute-dtype parts, in units of the
# hidden size h, the MLP width ff, and the query and key/value widths. Fitted to Gemma 3 and Llama shapes.
FP32_SAVED_PER_H = 8.0
SAVED_PER_H, SAVED_PER_FF, SAVED_PER_Q, SAVED_PER_KV = 4.0, 5.5, 5.0, 4.0
# With the fused norms and activations (core/train/fused.py; on by default on a CPU) a layer keeps what its
# backward needs, counted tensor by tensor in the compute dtype: 6 of width h (the four norms' inputs, the two
# normed inputs of the LoRA projections), 4 of the query width (q before and after RoPE, attention's output and
# its reshaped copy), 3 of the key/value width, 3 of the MLP width (gate, up, their product); times a slack
# fitted to measured peaks (bench_memory, CPU: 1.01-1.06 for Gemma 3 270M in bf16, 1.26 in fp32, 1.46 for a
# random Llama with grouped KV heads; one factor for all keeps the estimate within 0.92-1.12 of each). With
# ``recompute`` on (the CPU's default) eager layers keep one h and one ff less (the MLP's norm output and
# act(gate) * up, rebuilt in backward: core/train/fused.py) and compiled ones up to two h and one ff less
# (core/train/compile.py): the plan counts the eager figure, the larger of the two. Without that the estimate of
# an fp32 Gemma 3 270M run (tests/core/model/test_memory_plan.py) came to 1.22-1.26x its measured peak.
FUSED_SAVED_PER_H, FUSED_SAVED_PER_FF, FUSED_SAVED_PER_Q, FUSED_SAVED_PER_KV = 6.0, 3.0, 4.0, 3.0
FUSED_SLACK = 1.3
# One chunk of logits at its peak: the matmul's output buffer (compute dtype, the gradient goes back through
# it) and one fp32 work buffer, both reused by every chunk, plus the allocator's slack. Under bf16 that is
# 2 + 4 bytes a logit; counted as 8 (the softcap's tanh needs one more fp32 copy).
HEAD_BYTES_PER_LOGIT = 8


class OutOfMemoryRisk(LlamaForgeError):
    """The estimate says it will not fit; the message has the numbers and what to change."""


@dataclass(frozen=True)
class BatchShape:
    """The largest micro-batch a run will see: ``rows`` sequences padded to ``width`` tokens, of which
    ``label_rows`` carry a label (the output head runs only there)."""

    rows: int
    width: int
    label_rows: int

    @property
    def tokens(self) -> int:
        return self.rows * self.width


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    lora: int
    optimizer: int
    activations: int
    total: int
    free: int | None
    device: str
    fits: bool | None  # None when free memory is unknown
    advice: list[str] = field(default_factory=list)
    head: int = 0
    runtime: int = 0
    load: int = 0  # the GGUF load's transient, when it sets the peak (else 0)
    pool: str = "RAM"  # what ``free`` measures: "RAM", "VRAM", ...

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def breakdown(self) -> dict[str, int]:
        return {"weights": self.weights, "lora": self.lora, "optimizer": self.optimizer,
                "activations": self.activations, "head": self.head, "runtime": self.runtime, "load": self.load}

    def summary(self) -> str:
        parts = [f"weights {fmt_bytes(self.weights)}", f"LoRA {fmt_bytes(self.lora)}",
                 f"optimizer {fmt_bytes(self.optimizer)}", f"activations {fmt_bytes(self.activations)}"]
        if self.head:
            parts.append(f"head {fmt_bytes(self.head)}")
        if self.runtime:
            parts.append(f"runtime {fmt_bytes(self.runtime)}")
        if self.load:
            parts.append(f"GGUF load {fmt_bytes(self.load)}")
        free = "unknown" if self.free is None else fmt_bytes(self.free)
        return f"needs ~{fmt_bytes(self.total)} on {self.device} ({', '.join(parts)}); free: {free} ({self.pool})"


def fmt_bytes(n: int | float | None) -> str:
    return human_bytes(n, binary=True, unknown="?")


def memory_pool(device: str | torch.device = "cpu") -> tuple[str, int | None]:
    """(name, free bytes) of the memory a run on ``device`` draws from: VRAM on CUDA and ROCm, unified memory on
    MPS, RAM on the CPU. ``device_memory`` decides, so the plan, the fit check and the gauges agree."""
    free, _total, name = device_memory(device)
    return name, free


def free_memory(device: str | torch.device = "cpu") -> int | None:
    """Free bytes in ``device``'s pool (``memory_pool``)."""
    return memory_pool(device)[1]


def dtype_bytes(dtype: Any) -> int:
    names = {"float32": 4, "fp32": 4, "float16": 2, "fp16": 2, "bfloat16": 2, "bf16": 2}
    key = str(dtype).removeprefix("torch.")
    if key in names:
        return names[key]
    raise LlamaForgeError(f"unknown dtype {dtype!r}")


def _cfg(config: Any, key: str, default: Any = None) -> Any:
    value = config.get(key, default) if isinstance(config, dict) else getattr(config, key, default)
    return default if value is None else value


def lora_parameters(config: Any, rank: int, targets: tuple[str, ...] = DEFAULT_LORA_TARGETS) -> int:
    """Parameters of rank-``rank`` LoRA on the named projections of every layer."""
    h = int(_cfg(config, "hidden_size"))
    ff = int(_cfg(config, "intermediate_size"))
    heads = int(_cfg(config, "num_attention_heads"))
    kv = int(_cfg(config, "num_key_value_heads", heads))
    hd = int(_cfg(config, "head_dim", 0) or h // heads)
    shapes = {
        "q_proj": (h, heads * hd), "k_proj": (h, kv * hd), "v_proj": (h, kv * hd), "o_proj": (heads * hd, h),
        "gate_proj": (h, ff), "up_proj": (h, ff), "down_proj": (ff, h),
        "qkv_proj": (h, (heads + 2 * kv) * hd), "gate_up_proj": (h, 2 * ff),
    }
    per_layer = sum(rank * (i + o) for name, (i, o) in shapes.items() if name in targets)
    return per_layer * int(_cfg(config, "num_hidden_layers"))


def activation_bytes(config: Any, batch_size: int, seq_len: int, dtype_size: int, *,
                     gradient_checkpointing: bool = False, fused: bool = False, recompute: bool = False,
                     attention_probs: bool = False) -> int:
    """Bytes the forward pass saves for backward over ``batch_size x seq_len`` tokens (padding included);
    ``fused``: with core/train/fused.py's norms and activations; ``recompute``: with their outputs rebuilt in
    backward too (the ``recompute`` option; counted only with ``fused``, as the eager recipes need it);
    ``attention_probs``: attention keeps its probabilities (core/train/attention.py's matmul path: heads x
    seq^2 numbers a row and layer, where SDPA keeps one a row)."""
    h = int(_cfg(config, "hidden_size"))
    ff = int(_cfg(config, "intermediate_size"))
    heads = int(_cfg(config, "num_attention_heads"))
    kv = int(_cfg(config, "num_key_value_heads", heads))
    hd = int(_cfg(config, "head_dim", 0) or h // heads)
    layers = int(_cfg(config, "num_hidden_layers"))
    tokens = batch_size * seq_len
    if fused:
        kept_h, kept_ff = (FUSED_SAVED_PER_H - 1, FUSED_SAVED_PER_FF - 1) if recompute else (FUSED_SAVED_PER_H,
                                                                                         FUSED_SAVED_PER_FF)
        per_token_layer = (kept_h * h + kept_ff * ff + FUSED_SAVED_PER_Q * heads * hd
                           + FUSED_SAVED_PER_KV * kv * hd) * dtype_size * FUSED_SLACK
    else:
        per_token_layer = (FP32_SAVED_PER_H * h * 4
                           + (SAVED_PER_H * h + SAVED_PER_FF * ff + SAVED_PER_Q * heads * hd
                              + SAVED_PER_KV * kv * hd) * dtype_size)
    probs = batch_size * heads * seq_len * seq_len * dtype_size if attention_probs else 0
    if gradient_checkpointing:  # each layer keeps its input; one layer at a time is recomputed in full
        return int(tokens * (layers * h * dtype_size + per_token_layer) + probs)
    return int(tokens * layers * per_token_layer + layers * probs)


def head_bytes(config: Any, label_rows: int, dtype_size: int, *, chunk_rows: int | None = None,
               device: str = "cpu") -> int:
    """The loss head's peak: one chunk of logits and its fp32 temporaries, plus the gathered rows and their
    gradient. ``chunk_rows``: rows per chunk (``core.train.loss`` decides; the default mirrors it)."""
    h = int(_cfg(config, "hidden_size"))
    vocab = int(_cfg(config, "vocab_size"))
    if chunk_rows is None:
        budget = (128 if device.startswith("cpu") else 512) * MIB
        chunk_rows = max(16, budget // (4 * max(vocab, 1)))
    rows = min(max(label_rows, 0), chunk_rows)
    return int(rows * vocab * HEAD_BYTES_PER_LOGIT + 2 * label_rows * h * 4)


def runtime_bytes(config: Any, device: str) -> int:
    """What the process holds besides the model: CPU RSS counts the libraries and the tokenizer."""
    if not device.startswith("cpu"):
        return 0
    return CPU_RUNTIME + int(_cfg(config, "vocab_size", 0)) * TOKENIZER_BYTES_PER_TOKEN


def estimate_memory(config: Any, *, dtype: Any = "bfloat16", device: str | torch.device = "cpu",
                    batch_size: int = 1, seq_len: int = 512, lora_rank: int | None = 8,
                    lora_targets: tuple[str, ...] = DEFAULT_LORA_TARGETS, weights_bytes: int | None = None,
                    gradient_checkpointing: bool = False, free: int | None = None,
                    training: bool = True, batch: BatchShape | None = None, head_chunk_rows: int | None = None,
                    load_transient: int = 0, pool: str | None = None, fused: bool = False,
                    recompute: bool = False, attention_probs: bool = False) -> MemoryEstimate:
    """Estimate the peak memory of training (or, ``training=False``, loading) and compare it with free memory.

    ``batch``: the largest micro-batch of the run's data (``core.train.plan``); without it the worst case
    ``batch_size x seq_len``, every position labelled. ``weights_bytes`` overrides the weights figure (a GGUF
    kept quantized); ``load_transient``: the GGUF load's peak on top of the weights; ``free`` overrides the
    measurement (``pool`` then names it).
    """
    from llamaforge_tui.core.gguf.arch import expected_parameter_count

    dev = device if isinstance(device, str) else str(device)
    size = dtype_bytes(dtype)
    weights = int(weights_bytes) if weights_bytes is not None else expected_parameter_count(config) * size
    shape = batch or BatchShape(batch_size, seq_len, batch_size * seq_len)
    lora = optimizer = activations = head = 0
    if training:
        n_lora = lora_parameters(config, lora_rank, lora_targets) if lora_rank else 0
        lora = n_lora * 4
        optimizer = n_lora * 4 * 3  # AdamW moments + gradient, fp32
        activations = activation_bytes(config, shape.rows, shape.width, size,
                                       gradient_checkpointing=gradient_checkpointing, fused=fused,
                                       recompute=recompute, attention_probs=attention_probs)
        head = head_bytes(config, shape.label_rows, size, chunk_rows=head_chunk_rows, device=dev)
    runtime = runtime_bytes(config, dev)
    step = lora + optimizer + activations + head
    load = load_transient if load_transient > step else 0
    total = int((runtime + weights + max(step, load_transient)) * SAFETY_MARGIN)
    measured_pool, measured_free = memory_pool(device) if free is None else (pool or _pool_name(dev), free)
    context = CUDA_CONTEXT if dev.startswith("cuda") else 0
    fits = None if measured_free is None else total + context <= measured_free
    advice: list[str] = []
    if fits is False:
        advice = _advice(config, weights, activations, total + context, measured_free or 0, shape, size,
                         gradient_checkpointing, training)
    return MemoryEstimate(weights, lora, optimizer, activations, total, measured_free, dev, fits, advice,
                          head=head, runtime=runtime, load=load, pool=pool or measured_pool)


def _pool_name(device: str) -> str:
    return "VRAM" if device.startswith("cuda") else "unified memory" if device.startswith("mps") else "RAM"


def _advice(config: Any, weights: int, activations: int, total: int, free: int, shape: BatchShape, size: int,
            checkpointing: bool, training: bool) -> list[str]:
    tips: list[str] = []
    short = total - free
    if training and activations > short / 2:
        if shape.rows > 1:
            tips.append(f"lower --batch-size (largest batch: {shape.rows} x {shape.width} tokens) and raise "
                        "--grad-accum to keep the effective batch")
        if shape.width > 256:
            tips.append(f"lower --max-seq-len (longest batch row: {shape.width} tokens)")
        if not checkpointing:
            tips.append("enable gradient checkpointing")
    if weights > free / 2:
        if size == 4:
            tips.append("use bf16/fp16 weights (half the weight memory)")
        tips.append("use --weights gguf-quantized (keeps the GGUF's quantized blocks in memory)")
        tips.append("pick a smaller model")
    if not tips:
        tips.append("close other programs using memory, or pick a smaller model")
    return tips


def check_model_fits(weights_bytes: int, device: str | torch.device, *, free: int | None = None) -> None:
    """Raise ``OutOfMemoryRisk`` before loading when the weights alone cannot fit in free memory."""
    free = free_memory(device) if free is None else free
    if free is None:
        return
    need = int(weights_bytes * 1.05) + 256 * MIB  # the load's one-tensor transient and allocator slack
    if need > free:
        dev = device if isinstance(device, str) else str(device)
        raise OutOfMemoryRisk(
            f"loading needs ~{fmt_bytes(need)} on {dev} but only {fmt_bytes(free)} is free; "
            "try --weights gguf-quantized, a bf16/fp16 dtype, or a smaller model"
        )


def peak_rss_bytes() -> int | None:
    """This process's peak resident set size.

    Linux: ``VmHWM`` from /proc (per address space; ``ru_maxrss`` survives ``exec`` and would report the parent's
    peak in a freshly spawned child). Elsewhere ``ru_maxrss`` (KiB on Linux/BSD, bytes on macOS).
    """
    import sys

    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


# -- the memory a device trains in ----------------------------------------------------------------------------------
def device_memory(device: Any = "cpu") -> tuple[int | None, int | None, str]:
    """``(free bytes, total bytes, label)`` of the memory a run on ``device`` allocates from.

    CUDA and ROCm GPUs: the GPU's VRAM (``torch.cuda.mem_get_info``; ROCm builds answer through the same call).
    MPS: unified memory, so what the system has available, and no more than Metal's recommended working set
    leaves beside what this process already holds there. CPU: available RAM. ``None`` where unknown.
    """
    text = str(device)
    kind = str(getattr(device, "type", text.split(":")[0]))
    if kind == "cuda":
        index = None if isinstance(device, str) else getattr(device, "index", None)
        if index is None and ":" in text:
            index = int(text.split(":", 1)[1])
        try:
            import torch

            free, total = torch.cuda.mem_get_info(index)
            return int(free), int(total), "VRAM"
        except (RuntimeError, AssertionError, ValueError):
            return None, None, "VRAM"
    vm = psutil.virtual_memory()
    free, total = int(vm.available), int(vm.total)
    if kind == "mps":
        limit, held = _mps_working_set()
        if limit is not None:
            free = min(free, max(0, limit - (held or 0)))
        return free, total, "unified memory"
    return free, total, "RAM"


def _mps_working_set() -> tuple[int | None, int | None]:
    """(Metal's recommended max working set, what this process holds): torch 2.5+ on a Mac; else Nones."""
    try:
        import torch

        if not torch.backends.mps.is_available():
            return None, None
        return int(torch.mps.recommended_max_memory()), int(torch.mps.driver_allocated_memory())
    except (AttributeError, RuntimeError):
        return None, None
