"""Estimate the memory a load or a training run needs, before doing it, and say what to change if it won't fit.

Dying halfway through a load with an out-of-memory error (or getting the whole machine swapping) is the worst
outcome for an interactive tool, so the numbers are computed from the GGUF header or the config alone:

- weights: parameter count x dtype size (or the GGUF's own bytes when kept quantized);
- LoRA: per adapted linear layer ``r x (in + out)`` parameters, trained in fp32;
- optimizer: AdamW keeps two fp32 moments per trainable parameter, plus the fp32 gradient;
- activations: per layer and token, a handful of hidden-size vectors saved for backward, the attention
  scores (``heads x seq``) unless a fused kernel is used, and the logits (``vocab`` per token, fp32), which dominate
  small models with large vocabularies. Gradient checkpointing keeps one hidden vector per layer instead.

The activation model is deliberately conservative (a margin of 20 % on top); it is a guard, not a profiler.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from llamaforge_tui.core.errors import LlamaForgeError
from llamaforge_tui.core.fsutil import human_bytes

if TYPE_CHECKING:
    import torch

GIB = 1024**3
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SAFETY_MARGIN = 1.2
RUNTIME_OVERHEAD = 512 * 1024**2  # CUDA context / allocator slack / Python


class OutOfMemoryRisk(LlamaForgeError):
    """The estimate says it will not fit; the message has the numbers and what to change."""


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        parts = [f"weights {fmt_bytes(self.weights)}", f"LoRA {fmt_bytes(self.lora)}",
                 f"optimizer {fmt_bytes(self.optimizer)}", f"activations {fmt_bytes(self.activations)}"]
        free = "unknown" if self.free is None else fmt_bytes(self.free)
        return f"needs ~{fmt_bytes(self.total)} on {self.device} ({', '.join(parts)}); free: {free}"


def fmt_bytes(n: int | float | None) -> str:
    return human_bytes(n, binary=True, unknown="?")


def free_memory(device: str | torch.device = "cpu") -> int | None:
    """Free bytes of the pool ``device`` allocates from: VRAM on CUDA/ROCm, unified memory on MPS, else RAM
    (``core.system.memory_pool`` decides, so the plan and the gauges agree)."""
    from llamaforge_tui.core.system import memory_pool

    return memory_pool(device)[0]


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
                     gradient_checkpointing: bool = False) -> int:
    h = int(_cfg(config, "hidden_size"))
    ff = int(_cfg(config, "intermediate_size"))
    heads = int(_cfg(config, "num_attention_heads"))
    layers = int(_cfg(config, "num_hidden_layers"))
    vocab = int(_cfg(config, "vocab_size"))
    tokens = batch_size * seq_len
    if gradient_checkpointing:
        per_layer = h * dtype_size * tokens
        recompute = (10 * h + 3 * ff) * dtype_size * tokens + heads * seq_len * tokens * dtype_size
        body = layers * per_layer + recompute
    else:
        per_token_layer = (10 * h + 3 * ff) * dtype_size
        scores = heads * seq_len * dtype_size  # eager attention keeps the probabilities
        body = layers * tokens * (per_token_layer + scores)
    logits = tokens * vocab * 4 * 2  # fp32 logits and their gradient
    return int(body + logits)


def estimate_memory(config: Any, *, dtype: Any = "bfloat16", device: str | torch.device = "cpu",
                    batch_size: int = 1, seq_len: int = 512, lora_rank: int | None = 8,
                    lora_targets: tuple[str, ...] = DEFAULT_LORA_TARGETS, weights_bytes: int | None = None,
                    gradient_checkpointing: bool = False, free: int | None = None,
                    training: bool = True) -> MemoryEstimate:
    """Estimate (weights, LoRA, optimizer, activations) for ``batch_size`` x ``seq_len`` and compare with free memory.

    ``weights_bytes`` overrides the weights figure (e.g. a GGUF kept quantized); ``free`` overrides the measurement.
    """
    from llamaforge_tui.core.gguf.arch import expected_parameter_count

    size = dtype_bytes(dtype)
    weights = int(weights_bytes) if weights_bytes is not None else expected_parameter_count(config) * size
    lora = optimizer = activations = 0
    if training:
        n_lora = lora_parameters(config, lora_rank, lora_targets) if lora_rank else 0
        lora = n_lora * 4
        optimizer = n_lora * 4 * 3  # AdamW moments + gradient, fp32
        activations = activation_bytes(config, batch_size, seq_len, size,
                                       gradient_checkpointing=gradient_checkpointing)
    total = int((weights + lora + optimizer + activations) * SAFETY_MARGIN) + RUNTIME_OVERHEAD
    dev = device if isinstance(device, str) else str(device)
    free = free_memory(device) if free is None else free
    fits = None if free is None else total <= free
    advice: list[str] = []
    if fits is False:
        advice = _advice(config, weights, activations, total, free or 0, batch_size, seq_len, size,
                         gradient_checkpointing, training)
    return MemoryEstimate(weights, lora, optimizer, activations, total, free, dev, fits, advice)


def _advice(config: Any, weights: int, activations: int, total: int, free: int, batch: int, seq: int, size: int,
            checkpointing: bool, training: bool) -> list[str]:
    tips: list[str] = []
    short = total - free
    if training and activations > short / 2:
        if batch > 1:
            tips.append(f"lower --batch-size (now {batch}) and raise --grad-accum to keep the effective batch")
        if seq > 256:
            tips.append(f"lower --max-seq-len (now {seq})")
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
    need = int(weights_bytes * 1.05) + RUNTIME_OVERHEAD // 2
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
