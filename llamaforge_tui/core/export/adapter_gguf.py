"""A PEFT LoRA adapter written in llama.cpp's LoRA-adapter GGUF format (FORMATS.md §4).

A few MB instead of a second copy of the model, applied by llama.cpp (and Ollama's ``ADAPTER``) on the
unchanged source GGUF: for 4-bit sources it is the most faithful small artifact, since nothing is
requantized. llama.cpp scales each pair by ``alpha / rank``; PEFT used ``alpha / r`` or ``alpha / sqrt(r)``
(rsLoRA) with per-module patterns, so the difference is folded into ``lora_b``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType

from llamaforge_tui.core.export import names as export_names
from llamaforge_tui.core.export.merge import GgufModelShape
from llamaforge_tui.core.gguf.writer import ExportError, KVEntry, TensorPlan, WriteProgress, kv, write_gguf
from llamaforge_tui.core.model.lora_weights import LoraAdapter, LoraModule


def folded_b(module: LoraModule, alpha: float) -> np.ndarray:
    """``B`` scaled so that llama.cpp's ``alpha / rank`` gives PEFT's scale exactly."""
    b = module.b.astype(np.float32)
    if alpha > 0:
        return b * np.float32(module.scaling * module.rank / alpha)
    return b * np.float32(module.scaling)


def adapter_tensor_plans(adapter: LoraAdapter, shape: GgufModelShape, base_tensors: set[str],
                         dtype: Q = Q.F32) -> list[TensorPlan]:
    """``<base tensor>.lora_a`` (ne [in, r]) and ``.lora_b`` (ne [r, out]) for every module, in module order."""
    alpha = adapter.alpha
    plans: list[TensorPlan] = []
    for module in adapter.modules.values():
        gname = export_names.gguf_name(shape.arch, module.weight_name, shape.n_layers)
        if gname is None:
            raise ExportError(f"adapter module {module.hf_name} has no GGUF tensor in a {shape.arch} model")
        if module.is_embedding or gname == "token_embd.weight":
            if shape.tied:
                raise ExportError(
                    "the adapter trains the token embeddings of a tied-embedding model; llama.cpp crashes on "
                    "such an adapter (the output layer reuses the embeddings). Export the merged GGUF instead")
        if gname == "output.weight" and shape.tied:
            raise ExportError("the adapter trains lm_head of a tied-embedding model; a LoRA-adapter GGUF cannot "
                              "express that (llama.cpp refuses output.weight.lora_*). Export the merged GGUF instead")
        if gname not in base_tensors:
            raise ExportError(f"adapter module {module.hf_name} maps to {gname}, which the base GGUF lacks")
        if module.is_embedding:
            a = np.ascontiguousarray(module.a.astype(np.float32).T)  # llama.cpp wants the embedding A flipped
            b = np.ascontiguousarray(folded_b(module, alpha).T)
        else:
            a = module.a.astype(np.float32)
            b = export_names.to_gguf_rows(shape.arch, gname, folded_b(module, alpha), shape.n_head, shape.n_head_kv)
        for suffix, arr in (("lora_a", a), ("lora_b", b)):
            arr = np.ascontiguousarray(arr)
            ttype = dtype if arr.shape[-1] % 32 == 0 or dtype in (Q.F32, Q.F16) else Q.F32
            plans.append(TensorPlan(f"{gname}.{suffix}", tuple(reversed(arr.shape)), ttype,
                                    _encoder(arr, ttype)))
    return plans


def _encoder(arr: np.ndarray, ttype: Q) -> Callable[[], np.ndarray]:
    from llamaforge_tui.core.gguf.writer import encode_tensor

    return lambda: encode_tensor(arr, ttype)


def write_adapter_gguf(
    path: Path | str,
    adapter: LoraAdapter,
    shape: GgufModelShape,
    base_tensors: set[str],
    *,
    name: str = "",
    base_name: str = "",
    description: str = "",
    dtype: Q = Q.F32,
    progress: Callable[[WriteProgress], None] | None = None,
) -> int:
    """Write the adapter GGUF; returns its size. ``base_tensors``: tensor names of the exact base GGUF."""
    plans = adapter_tensor_plans(adapter, shape, base_tensors, dtype)
    meta: dict[str, KVEntry] = {
        "general.architecture": kv(shape.arch),
        "general.type": kv("adapter"),
        "adapter.type": kv("lora"),
        "adapter.lora.alpha": KVEntry(GGUFValueType.FLOAT32, float(adapter.alpha)),
    }
    if name:
        meta["general.name"] = kv(name)
    if description:
        meta["general.description"] = kv(description)
    if base_name:
        meta["general.base_model.count"] = kv(1)
        meta["general.base_model.0.name"] = kv(base_name)
    return write_gguf(path, meta, plans, progress=progress)
