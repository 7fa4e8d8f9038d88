"""Merged-model GGUF from a GGUF source: edit the source file tensor by tensor.

Why tensor by tensor in GGUF space: the merge ``W + s·B·A`` is linear, and the only GGUF<->HF transforms
that touch LoRA targets (the llama q/k rope row permutation) are row permutations, so the delta can be moved
into GGUF layout and added to the dequantized source tensor. Nothing else is loaded: peak memory is one
tensor, every metadata key and GGUF-only tensor (``rope_freqs``...) is carried over as it is, and untouched
tensors keep their exact bytes whenever the output type allows.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType, LlamaFileType

from llamaforge_tui.core.export import names as export_names
from llamaforge_tui.core.gguf.file import GgufFile
from llamaforge_tui.core.gguf.writer import (
    PYTHON_QUANT_TYPES,
    ExportError,
    KVEntry,
    TensorPlan,
    convert_rows,
    decode_tensor,
    encode_tensor,
    kv_from_gguf,
    must_stay_f32,
    output_type_for,
)
from llamaforge_tui.core.model.lora_weights import LoraAdapter, LoraModule

# Output types written in Python, and their general.file_type.
PLAIN_TYPES: dict[str, Q] = {
    "f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0,
    "q4_0": Q.Q4_0, "q4_1": Q.Q4_1, "q5_0": Q.Q5_0, "q5_1": Q.Q5_1,
}
FILE_TYPES: dict[str, LlamaFileType] = {
    "f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16, "bf16": LlamaFileType.MOSTLY_BF16,
    "q8_0": LlamaFileType.MOSTLY_Q8_0, "q4_0": LlamaFileType.MOSTLY_Q4_0, "q4_1": LlamaFileType.MOSTLY_Q4_1,
    "q5_0": LlamaFileType.MOSTLY_Q5_0, "q5_1": LlamaFileType.MOSTLY_Q5_1, "q4_k_m": LlamaFileType.MOSTLY_Q4_K_M,
    "q5_k_m": LlamaFileType.MOSTLY_Q5_K_M, "q6_k": LlamaFileType.MOSTLY_Q6_K,
}


@dataclass(frozen=True)
class GgufModelShape:
    """What the merge needs to know about the base: names, permutation heads, tied output."""

    arch: str
    n_layers: int
    n_head: int
    n_head_kv: int
    tied: bool


def shape_of(src: GgufFile) -> GgufModelShape:
    arch = src.architecture
    if not arch:
        raise ExportError(f"{src.path}: no general.architecture")
    n_head = src.arch_get("attention.head_count", 0)
    n_head_kv = src.arch_get("attention.head_count_kv", n_head)
    n_head = int(n_head[0] if isinstance(n_head, list) else n_head)
    n_head_kv = int(n_head_kv[0] if isinstance(n_head_kv, list) else n_head_kv)
    return GgufModelShape(arch, int(src.arch_get("block_count", 0)), n_head, n_head_kv,
                          tied=not src.has_tensor("output.weight"))


def map_modules(adapter: LoraAdapter, shape: GgufModelShape, tensor_names: set[str], *,
                allow_new_output: bool = True) -> dict[str, LoraModule]:
    """GGUF tensor name -> the LoRA module that changes it. Refuses what would not behave as in training."""
    out: dict[str, LoraModule] = {}
    for module in adapter.modules.values():
        gname = export_names.gguf_name(shape.arch, module.weight_name, shape.n_layers)
        if gname is None:
            raise ExportError(f"adapter module {module.hf_name} has no GGUF tensor in a {shape.arch} model")
        if module.is_embedding and shape.tied:
            raise ExportError(
                "the adapter trains the token embeddings of a model whose output layer shares them (tied "
                "embeddings); merged or converted, the output layer would change too. Retrain without "
                "embed_tokens in target_modules")
        if gname not in tensor_names and not (gname == "output.weight" and shape.tied and allow_new_output):
            raise ExportError(f"adapter module {module.hf_name} maps to {gname}, which the source GGUF lacks")
        out[gname] = module
    return out


def delta_in_gguf_layout(module: LoraModule, gname: str, shape: GgufModelShape) -> np.ndarray:
    return export_names.to_gguf_rows(shape.arch, gname, module.delta(), shape.n_head, shape.n_head_kv)


def _touched_type(out_type: str, src_type: Q, gname: str, ne: tuple[int, ...]) -> Q:
    if out_type in PLAIN_TYPES:
        return output_type_for(gname, ne, PLAIN_TYPES[out_type])
    if out_type == "keep":
        if src_type in PYTHON_QUANT_TYPES:
            return src_type
        return output_type_for(gname, ne, Q.Q8_0)
    if out_type in ("hybrid", "hybrid-q8_0"):
        return output_type_for(gname, ne, Q.Q8_0)
    if out_type == "hybrid-f16":
        return output_type_for(gname, ne, Q.F16)
    raise ExportError(f"unknown output type {out_type!r}")


def _untouched_type(out_type: str, src_type: Q, gname: str, ne: tuple[int, ...]) -> Q:
    if out_type in PLAIN_TYPES:
        if must_stay_f32(gname, ne):
            return src_type if src_type in (Q.F32,) else Q.F32
        return output_type_for(gname, ne, PLAIN_TYPES[out_type])
    return src_type  # keep / hybrid: the original bytes


def plan_gguf_merge(
    src: GgufFile,
    adapter: LoraAdapter | None,
    out_type: str,
    *,
    kv_overrides: Mapping[str, KVEntry | None] = {},
) -> tuple[dict[str, KVEntry], list[TensorPlan], int]:
    """The metadata and tensor plan of the merged file; returns (kv, tensors, number of merged tensors).

    ``out_type``: a key of ``PLAIN_TYPES``, ``keep`` (each tensor in its source type; merged tensors requantized
    to it when numpy can, else Q8_0) or ``hybrid``/``hybrid-f16`` (untouched tensors keep their bytes, merged
    ones become Q8_0/F16). ``kv_overrides`` replaces keys (``None`` deletes).
    """
    shape = shape_of(src)
    names = {t.name for t in src.tensors}
    touched = map_modules(adapter, shape, names) if adapter is not None else {}
    plans: list[TensorPlan] = []
    any_quant = False
    for info in src.tensors:
        module = touched.get(info.name)
        if module is not None:
            ttype = _touched_type(out_type, info.ggml_type, info.name, info.ne)

            def produce(info=info, module=module, ttype=ttype) -> np.ndarray:
                w = decode_tensor(src, info.name)
                w += delta_in_gguf_layout(module, info.name, shape)
                return encode_tensor(w, ttype)
        else:
            ttype = _untouched_type(out_type, info.ggml_type, info.name, info.ne)
            if ttype == info.ggml_type:
                def produce(info=info) -> np.ndarray:
                    return src.tensor_bytes(info)
            else:
                def produce(info=info, ttype=ttype) -> Iterator[np.ndarray]:
                    return convert_rows(src, info.name, ttype)
        any_quant |= ttype not in (Q.F32, Q.F16, Q.BF16)
        plans.append(TensorPlan(info.name, info.ne, ttype, produce))
    if "output.weight" in touched and "output.weight" not in names:
        # lm_head LoRA on a tied model: write a separate output matrix = embeddings + delta.
        emb = src.tensor("token_embd.weight")
        module = touched["output.weight"]
        ttype = _touched_type(out_type, emb.ggml_type, "output.weight", emb.ne)

        def produce_out(module=module, ttype=ttype) -> np.ndarray:
            w = decode_tensor(src, "token_embd.weight")
            w += delta_in_gguf_layout(module, "output.weight", shape)
            return encode_tensor(w, ttype)
        plans.append(TensorPlan("output.weight", emb.ne, ttype, produce_out))
    kv = kv_from_gguf(src, skip=[k for k in src.kv if k.startswith("split.")])
    if out_type in FILE_TYPES:
        kv["general.file_type"] = KVEntry(GGUFValueType.UINT32, int(FILE_TYPES[out_type]))
    if any_quant and "general.quantization_version" not in kv:
        kv["general.quantization_version"] = KVEntry(GGUFValueType.UINT32, 2)
    for key, entry in kv_overrides.items():
        if entry is None:
            kv.pop(key, None)
        else:
            kv[key] = entry
    return kv, plans, len(touched)
