"""A PEFT LoRA adapter folder read as plain numpy: per module A, B and the scale PEFT applies.

Export merges (or converts) tensor by tensor, so it needs the adapter as data, not as a PEFT model.
The scale is PEFT's own (``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA, per-module ``rank_pattern`` /
``alpha_pattern`` honoured), because that is what training used; llama.cpp's ``alpha / rank`` differs for
rsLoRA and patterns and must be folded in by the adapter writer.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llamaforge_tui.core.gguf.writer import ExportError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclass
class LoraModule:
    """One adapted module. ``hf_name`` is the base model's module path (``model.layers.0.self_attn.q_proj``)."""

    hf_name: str
    a: np.ndarray  # (r, in) for linear layers; (r, num_embeddings) for embeddings (PEFT's lora_embedding_A)
    b: np.ndarray  # (out, r); (dim, r) for embeddings
    scaling: float
    is_embedding: bool = False

    @property
    def rank(self) -> int:
        return int(self.a.shape[0])

    @property
    def weight_name(self) -> str:
        return self.hf_name + ".weight"

    def delta(self) -> np.ndarray:
        """The change to the HF weight, in the weight's own (out, in) layout, float32."""
        d = (self.b.astype(np.float32) @ self.a.astype(np.float32)) * np.float32(self.scaling)
        return d.T.copy() if self.is_embedding else d


@dataclass
class LoraAdapter:
    path: Path
    config: dict[str, Any]
    modules: dict[str, LoraModule] = field(default_factory=dict)

    @property
    def alpha(self) -> float:
        return float(self.config.get("lora_alpha") or 0.0)

    @property
    def r(self) -> int:
        return int(self.config.get("r") or 0)

    @property
    def use_rslora(self) -> bool:
        return bool(self.config.get("use_rslora"))

    def by_weight_name(self) -> dict[str, LoraModule]:
        return {m.weight_name: m for m in self.modules.values()}


def find_adapter_dir(run_dir: Path) -> Path:
    """``<run>/adapter``, else the newest ``checkpoints/step-N`` that holds an adapter."""
    candidates = [run_dir / "adapter", run_dir]
    ckpts = sorted(
        (p for p in (run_dir / "checkpoints").glob("step-*") if p.is_dir()),
        key=lambda p: int(p.name.split("-", 1)[1]) if p.name.split("-", 1)[1].isdigit() else -1,
        reverse=True,
    ) if (run_dir / "checkpoints").is_dir() else []
    for ck in ckpts:
        candidates += [ck / "adapter", ck]
    for c in candidates:
        if (c / ADAPTER_CONFIG).is_file() and (c / ADAPTER_WEIGHTS).is_file():
            return c
    raise ExportError(f"{run_dir}: no trained adapter found (expected adapter/{ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})")


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's rank/alpha pattern lookup: a key matches the module path's tail (``q_proj``, ``layers.0.self_attn.q_proj``)."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?{key}$", module):
            return value
    return default


def _load_tensors(path: Path) -> dict[str, np.ndarray]:
    """safetensors -> float32 numpy. Through torch because numpy has no bfloat16."""
    import torch
    from safetensors.torch import load_file

    return {k: v.to(torch.float32).numpy() for k, v in load_file(str(path)).items()}


def load_lora(adapter_dir: Path | str) -> LoraAdapter:
    """Read a PEFT LoRA folder; refuse what GGUF export cannot represent faithfully, with the reason."""
    adapter_dir = Path(adapter_dir)
    try:
        config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"cannot read {adapter_dir / ADAPTER_CONFIG}: {exc}") from exc
    ptype = str(config.get("peft_type", "LORA")).upper()
    if ptype != "LORA":
        raise ExportError(f"adapter type {ptype} cannot be exported; only LoRA adapters can")
    if config.get("use_dora"):
        raise ExportError("DoRA adapters cannot be exported to GGUF (llama.cpp has no magnitude vectors)")
    if config.get("modules_to_save"):
        raise ExportError(f"the adapter trains whole modules ({', '.join(config['modules_to_save'])}); "
                          "GGUF export supports LoRA weights only")
    if str(config.get("bias", "none")) != "none":
        raise ExportError("LoRA bias training (bias != 'none') cannot be exported")
    tensors = _load_tensors(adapter_dir / ADAPTER_WEIGHTS)
    alpha = float(config.get("lora_alpha") or 0.0)
    r_default = int(config.get("r") or 0)
    rslora = bool(config.get("use_rslora"))
    parts: dict[str, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        m = re.match(r"^(?:base_model\.model\.)?(.+)\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B)(?:\.[^.]+)?(?:\.weight)?$", key)
        if not m:
            raise ExportError(f"unexpected tensor {key!r} in the adapter (only LoRA A/B weights can be exported)")
        parts.setdefault(m.group(1), {})[m.group(2)] = value
    adapter = LoraAdapter(adapter_dir, config)
    for module, p in sorted(parts.items()):
        emb = "lora_embedding_A" in p
        a = p.get("lora_embedding_A" if emb else "lora_A")
        b = p.get("lora_embedding_B" if emb else "lora_B")
        if a is None or b is None:
            raise ExportError(f"adapter module {module}: A or B weights are missing")
        r = int(_pattern_value(config.get("rank_pattern") or {}, module, r_default) or a.shape[0])
        mod_alpha = float(_pattern_value(config.get("alpha_pattern") or {}, module, alpha))
        if r != a.shape[0]:
            r = int(a.shape[0])
        scaling = mod_alpha / (math.sqrt(r) if rslora else r)
        adapter.modules[module] = LoraModule(module, a, b, scaling, emb)
    if not adapter.modules:
        raise ExportError(f"{adapter_dir}: the adapter holds no LoRA weights")
    return adapter
