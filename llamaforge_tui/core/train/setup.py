"""The setup half of a run: device and precision, model and tokenizer, dataset, LoRA, optimizer, schedule.

Kept apart from the loop (trainer.py) so each piece is small enough to read, and so the benchmark can
build the very same model and data for the baseline it compares against.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llamaforge_tui.core.errors import ConfigError, LlamaForgeError
from llamaforge_tui.core.train.config import FORBIDDEN_TARGETS, TrainConfig
from llamaforge_tui.core.train.device import Precision, choose_device, choose_precision, cpu_has_fast_bf16  # noqa: F401

if TYPE_CHECKING:
    import torch

    from llamaforge_tui.core.settings import Settings

log = logging.getLogger(__name__)


# -- device and precision ------------------------------------------------------------------------
# The choices, with their reasons, live in ``device`` (CUDA, ROCm, MPS, CPU); these keep the old names.
def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    return choose_device(name, local_rank)[0]


def resolve_precision(dtype: str, device: torch.device) -> Precision:
    return choose_precision(dtype, device)[0]


# -- model ----------------------------------------------------------------------------------------
@dataclass
class ModelBundle:
    model: Any  # transformers causal LM
    tokenizer: Any
    chat_template: Any  # str | None, or the SOURCES bundle
    architecture: str | None
    description: dict[str, Any]
    ollama_template: str | None = None  # the Ollama model's TEMPLATE layer (Go), for chat_template = "ollama"


def load_model(config: TrainConfig, settings: Settings, precision: Precision, device: torch.device) -> ModelBundle:
    """Load the model through the model-sources core (GGUF, Ollama, HF repo or folder)."""
    from llamaforge_tui.core.model import loading

    loaded = loading.load_model(config.model, settings, weights=config.weights, dtype=precision.param_dtype,
                                device=str(device))
    desc = loaded.description
    description = desc.to_dict() if hasattr(desc, "to_dict") else dict(desc)
    return ModelBundle(loaded.model, loaded.tokenizer, loaded.chat_template, description.get("architecture"),
                       description, getattr(loaded, "ollama_template", None))


# -- data -----------------------------------------------------------------------------------------
@dataclass
class DataBundle:
    train: list[Any]
    eval: list[Any]
    stats: dict[str, Any]


def prepare_data(config: TrainConfig, bundle: ModelBundle) -> DataBundle:
    from llamaforge_tui.core.data.dataset import prepare_dataset, resolve_chat_template

    tok = bundle.tokenizer
    source: Any = tok
    if isinstance(bundle.chat_template, str) and not getattr(tok, "chat_template", None):
        tok.chat_template = bundle.chat_template
    template = resolve_chat_template(source, bundle.architecture, override=config.chat_template,
                                     ollama_template=bundle.ollama_template)
    prepared = prepare_dataset(config.data, tok, template, max_seq_len=config.max_seq_len,
                               format=config.data_format, policy=config.data_policy,
                               eval_split=config.eval_split, seed=config.seed)
    stats = dataclasses.asdict(prepared.stats) if dataclasses.is_dataclass(prepared.stats) else dict(prepared.stats)
    stats.update({"format": prepared.format, "template": prepared.template_name, "train_examples": len(prepared.train),
                  "eval_examples": len(prepared.eval), "invalid_records": len(prepared.errors),
                  "warnings": list(getattr(prepared, "warnings", []) or [])})
    return DataBundle(prepared.train, prepared.eval, stats)


# -- LoRA -----------------------------------------------------------------------------------------
def default_target_modules(model: Any) -> list[str]:
    """Every linear projection inside the transformer blocks (q/k/v/o, gate/up/down, fused variants),
    never the embedding or the output head."""
    names: set[str] = set()
    for full_name, module in model.named_modules():
        leaf = full_name.rsplit(".", 1)[-1]
        is_linear = hasattr(module, "in_features") and hasattr(module, "out_features") and "Linear" in type(module).__name__
        if is_linear and leaf not in FORBIDDEN_TARGETS and ".layers." in f".{full_name}":
            names.add(leaf)
    if not names:
        raise ConfigError("found no linear layers to put LoRA on; set target_modules in the config")
    return sorted(names)


def apply_lora(model: Any, config: TrainConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    targets = list(config.target_modules) or default_target_modules(model)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=targets, use_rslora=config.use_rslora, bias="none", task_type="CAUSAL_LM")
    try:
        peft_model = get_peft_model(model, lora)
    except ValueError as exc:
        raise ConfigError(f"cannot apply LoRA to {targets}: {exc}") from exc
    for name, p in peft_model.named_parameters():  # keep what we train in fp32 whatever the base dtype
        if p.requires_grad and p.dtype != _fp32():
            log.debug("upcasting %s to fp32", name)
            p.data = p.data.float()
    return peft_model


def keep_lora_inputs_narrow(model: Any) -> int:
    """Under autocast, stop peft casting each LoRA layer's input up to the fp32 of its weights.

    peft casts ``x`` to ``lora_A.weight.dtype`` (fp32) and autocast casts it straight back to bf16 for the
    matmul: the same numbers (bf16 -> fp32 -> bf16 is exact), two full copies of the activation per LoRA layer
    and one more kept for backward by each of q, k, v, gate and up, where one shared tensor does. Measured on
    Gemma 3 270M (2-core EPYC, a 1,324-token micro-batch): those copies were 11% of a step. Returns how many
    layers were changed (peft without the switch: 0, and nothing changes)."""
    changed = 0
    for module in model.modules():
        if hasattr(module, "cast_input_dtype_enabled") and hasattr(module, "lora_A"):
            module.cast_input_dtype_enabled = False
            changed += 1
    return changed


def _fp32() -> Any:
    import torch

    return torch.float32


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total). The total counts quantized GGUF weights too, which are buffers, not parameters."""
    from llamaforge_tui.core.model.quantized import logical_parameter_count

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, int(logical_parameter_count(model))


# -- optimizer and schedule -----------------------------------------------------------------------
def make_optimizer(model: Any, config: TrainConfig) -> torch.optim.Optimizer:
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise LlamaForgeError("no trainable parameters after applying LoRA")
    return torch.optim.AdamW(params, lr=config.learning_rate, betas=(0.9, 0.999), eps=1e-8,
                             weight_decay=config.weight_decay)


def warmup_steps(config: TrainConfig, total_steps: int) -> int:
    if config.warmup_steps is not None:
        return min(config.warmup_steps, total_steps)
    return int(math.ceil(0.03 * total_steps))


def lr_factor(step: int, total_steps: int, warmup: int, kind: str) -> float:
    """Multiplier of the peak learning rate before optimizer step ``step`` (0-based)."""
    if warmup and step < warmup:
        return (step + 1) / (warmup + 1)
    if kind == "constant" or total_steps <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int) -> Any:
    import functools

    import torch

    fn = functools.partial(lr_factor, total_steps=total_steps, warmup=warmup_steps(config, total_steps),
                           kind=config.scheduler)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
