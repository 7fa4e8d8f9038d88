"""Merged-model GGUF from a Hugging Face checkpoint: metadata from config + tokenizer, tensors streamed.

Tensors are read one at a time from the safetensors files, the LoRA delta is added in HF layout, then
``arch.hf_tensor_to_gguf`` applies llama.cpp's conventions (q/k permutation, Gemma ``w+1``, tied output
dropped). Hyperparameters follow llama.cpp's converter for the supported architectures; the vocabulary
comes from ``export_vocab``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType

from llamaforge_tui.core.gguf import arch as archmod

from llamaforge_tui.core.gguf import tensor_names
from llamaforge_tui.core.export.merge import FILE_TYPES, PLAIN_TYPES
from llamaforge_tui.core.export.vocab import tokenizer_kv
from llamaforge_tui.core.gguf.writer import (
    CHUNK_ELEMENTS,
    ExportError,
    KVEntry,
    TensorPlan,
    encode_tensor,
    kv,
    output_type_for,
)
from llamaforge_tui.core.model.lora_weights import LoraAdapter

_F32 = GGUFValueType.FLOAT32


def _rope_theta(cfg: dict[str, Any]) -> float | None:
    if cfg.get("rope_theta") is not None:
        return float(cfg["rope_theta"])
    rp = cfg.get("rope_parameters") or {}
    if isinstance(rp.get("full_attention"), dict):
        rp = rp["full_attention"]
    return float(rp["rope_theta"]) if rp.get("rope_theta") is not None else None


def _rope_scaling(cfg: dict[str, Any]) -> dict[str, Any]:
    rs = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    if isinstance(rs.get("full_attention"), dict):
        rs = rs["full_attention"]
    return rs if isinstance(rs, dict) else {}


def hparams_kv(cfg: dict[str, Any], gguf_arch: str) -> dict[str, KVEntry]:
    """The ``<arch>.*`` keys llama.cpp reads, from an HF ``config.json``."""
    a = gguf_arch
    n_head = int(cfg["num_attention_heads"])
    head_dim = int(cfg.get("head_dim") or cfg["hidden_size"] // n_head)
    out: dict[str, KVEntry] = {
        f"{a}.context_length": kv(int(cfg.get("max_position_embeddings") or 2048)),
        f"{a}.embedding_length": kv(int(cfg["hidden_size"])),
        f"{a}.block_count": kv(int(cfg["num_hidden_layers"])),
        f"{a}.feed_forward_length": kv(int(cfg["intermediate_size"])),
        f"{a}.attention.head_count": kv(n_head),
        f"{a}.attention.head_count_kv": kv(int(cfg.get("num_key_value_heads") or n_head)),
        f"{a}.attention.layer_norm_rms_epsilon": KVEntry(_F32, float(cfg.get("rms_norm_eps") or 1e-6)),
    }
    theta = _rope_theta(cfg)
    if theta is not None:
        out[f"{a}.rope.freq_base"] = KVEntry(_F32, theta)
    if cfg.get("head_dim") or a in ("gemma2", "gemma3", "qwen3"):
        out[f"{a}.attention.key_length"] = kv(head_dim)
        out[f"{a}.attention.value_length"] = kv(head_dim)
    if a in ("llama", "phi3"):
        out[f"{a}.rope.dimension_count"] = kv(int(head_dim * float(cfg.get("partial_rotary_factor") or 1.0)))
    if a == "llama":
        out[f"{a}.vocab_size"] = kv(int(cfg["vocab_size"]))
    if a in ("gemma2", "gemma3", "phi3") and (cfg.get("sliding_window") or a == "phi3"):
        out[f"{a}.attention.sliding_window"] = kv(int(cfg.get("sliding_window") or 0))
    if a == "gemma3":
        swa = (cfg.get("rope_parameters") or {}).get("sliding_attention") or {}
        local = swa.get("rope_theta") if isinstance(swa, dict) else None
        local = local or cfg.get("rope_local_base_freq")
        if local:
            out[f"{a}.rope.freq_base_swa"] = KVEntry(_F32, float(local))
    if a == "gemma2":
        for key in ("attn_logit_softcapping", "final_logit_softcapping"):
            if cfg.get(key) is not None:
                out[f"{a}.{key}"] = KVEntry(_F32, float(cfg[key]))
    if a == "gemma3" and cfg.get("final_logit_softcapping") is not None:
        out[f"{a}.final_logit_softcapping"] = KVEntry(_F32, float(cfg["final_logit_softcapping"]))
    if a == "phi3" and cfg.get("original_max_position_embeddings"):
        out[f"{a}.rope.scaling.original_context_length"] = kv(int(cfg["original_max_position_embeddings"]))
    rs = _rope_scaling(cfg)
    rtype = rs.get("rope_type") or rs.get("type")
    if rtype == "linear" and rs.get("factor"):
        out[f"{a}.rope.scaling.type"] = kv("linear")
        out[f"{a}.rope.scaling.factor"] = KVEntry(_F32, float(rs["factor"]))
    elif rtype == "yarn" and rs.get("factor"):
        out[f"{a}.rope.scaling.type"] = kv("yarn")
        out[f"{a}.rope.scaling.factor"] = KVEntry(_F32, float(rs["factor"]))
        if rs.get("original_max_position_embeddings"):
            out[f"{a}.rope.scaling.original_context_length"] = kv(int(rs["original_max_position_embeddings"]))
    elif rtype not in (None, "default", "llama3", "longrope"):
        raise ExportError(f"rope scaling {rtype!r} is not supported by the GGUF export yet")
    return out


def llama3_rope_freqs(cfg: dict[str, Any]) -> np.ndarray | None:
    """llama.cpp's ``rope_freqs`` for Llama 3.x rope scaling: one divisor per rotary frequency."""
    rs = _rope_scaling(cfg)
    if (rs.get("rope_type") or rs.get("type")) != "llama3":
        return None
    base = _rope_theta(cfg) or 10000.0
    dim = int(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])
    factor = float(rs.get("factor", 8.0))
    low, high = float(rs.get("low_freq_factor", 1.0)), float(rs.get("high_freq_factor", 4.0))
    old_ctx = float(rs.get("original_max_position_embeddings", 8192))
    low_wl, high_wl = old_ctx / low, old_ctx / high
    out = []
    for i in range(0, dim, 2):
        wavelen = 2 * math.pi / (1.0 / base ** (i / dim))
        if wavelen < high_wl:
            out.append(1.0)
        elif wavelen > low_wl:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def _value_transform(spec: Any, gname: str) -> bool:
    """Whether HF -> GGUF changes this tensor's values or row order (then it is converted whole)."""
    if spec.norm_offset and gname.endswith("norm.weight"):
        return True
    return bool(spec.permute_qk) and (".attn_q." in gname or ".attn_k." in gname)


def _safetensors_index(model_dir: Path) -> dict[str, Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return {name: model_dir / fname for name, fname in weight_map.items()}
    single = model_dir / "model.safetensors"
    if not single.is_file():
        raise ExportError(f"{model_dir}: no model.safetensors (or index); only safetensors checkpoints can be exported")
    from safetensors import safe_open

    with safe_open(str(single), framework="pt") as fh:
        return {name: single for name in fh.keys()}


def plan_hf_export(model_dir: Path, architecture: str | None, adapter: LoraAdapter | None, out_type: str, *,
                   kv_overrides: Mapping[str, KVEntry | None] = {}) -> tuple[dict[str, KVEntry], list[TensorPlan], Callable[[], None]]:
    """(kv, tensor plans, close) for an HF folder; ``close`` releases the open safetensors files."""
    from safetensors import safe_open

    cfg = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    cfg = {**cfg.get("text_config", {}), **{k: v for k, v in cfg.items() if k != "text_config"}}
    spec = archmod.arch_spec(cfg.get("model_type") or architecture or "")
    a = spec.gguf_arch
    if out_type not in PLAIN_TYPES and out_type != "keep":
        raise ExportError(f"{out_type} needs a GGUF source (it keeps the source's quantized tensors)")
    tied = bool(cfg.get("tie_word_embeddings", spec.name in ("gemma2", "gemma3")))
    cfg["tie_word_embeddings"] = tied
    n_layers = int(cfg["num_hidden_layers"])
    modules = adapter.by_weight_name() if adapter is not None else {}
    for wname, module in modules.items():
        if (module.is_embedding or wname == "model.embed_tokens.weight") and tied:
            raise ExportError("the adapter trains the token embeddings of a tied-embedding model; the output layer "
                              "would change too. Retrain without embed_tokens in target_modules")
        if wname == "lm_head.weight" and tied:
            raise ExportError("the adapter trains lm_head of a tied-embedding model; this cannot be merged into one "
                              "shared matrix. Retrain without lm_head in target_modules")
    index = _safetensors_index(model_dir)
    unknown = [m for m in modules if m not in index]
    if unknown:
        raise ExportError(f"adapter modules not in the checkpoint: {', '.join(unknown[:3])}")
    handles: dict[Path, Any] = {}

    def read(name: str) -> np.ndarray:
        import torch

        path = index[name]
        if path not in handles:
            handles[path] = safe_open(str(path), framework="pt")
        return handles[path].get_tensor(name).to(torch.float32).numpy()

    plans: list[TensorPlan] = []
    freqs = llama3_rope_freqs(cfg)
    if freqs is not None:
        plans.append(TensorPlan("rope_freqs.weight", (len(freqs),), Q.F32, lambda f=freqs: f))
    requested = PLAIN_TYPES.get(out_type)
    dtypes: dict[str, str] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for path in set(index.values()):
        with safe_open(str(path), framework="pt") as fh:
            for name in fh.keys():
                sl = fh.get_slice(name)
                dtypes[name] = str(sl.get_dtype())
                shapes[name] = tuple(int(d) for d in sl.get_shape())
    for name in index:
        if name.endswith("rotary_emb.inv_freq"):
            continue
        gname = tensor_names.hf_to_gguf_name(spec.name, name, n_layers)
        if gname is None:
            raise ExportError(f"{model_dir}: tensor {name} has no GGUF name for {a}")
        if gname == "output.weight" and tied:
            continue
        ne = tuple(reversed(shapes[name]))
        if requested is None:  # keep: the checkpoint's own precision
            requested_t = {"BF16": Q.BF16, "F16": Q.F16}.get(dtypes[name].upper(), Q.F32)
        else:
            requested_t = requested
        ttype = output_type_for(gname, ne, requested_t)

        def produce(name: str = name, ttype: Q = ttype, gname: str = gname) -> Any:
            module = modules.get(name)
            big = len(shapes[name]) == 2 and shapes[name][0] * shapes[name][1] > CHUNK_ELEMENTS
            if module is None and big and not _value_transform(spec, gname):
                return _row_blocks(name, ttype)
            w = read(name)
            if module is not None:
                w = w + module.delta()
            _, g = tensor_names.hf_tensor_to_gguf(spec.name, name, w, cfg)
            return encode_tensor(np.ascontiguousarray(g), ttype)

        def _row_blocks(name: str, ttype: Q) -> Iterator[np.ndarray]:
            import torch

            path = index[name]
            if path not in handles:
                handles[path] = safe_open(str(path), framework="pt")
            sl = handles[path].get_slice(name)
            rows, cols = shapes[name]
            step = max(1, CHUNK_ELEMENTS // cols)
            for r0 in range(0, rows, step):
                yield encode_tensor(sl[r0:min(rows, r0 + step)].to(torch.float32).numpy(), ttype)
        plans.append(TensorPlan(gname, ne, ttype, produce))
    meta: dict[str, KVEntry] = {"general.architecture": kv(a), "general.type": kv("model")}
    meta.update(hparams_kv(cfg, a))
    if out_type in FILE_TYPES:
        meta["general.file_type"] = kv(int(FILE_TYPES[out_type]))
    meta["general.quantization_version"] = kv(2)
    meta.update(tokenizer_kv(model_dir, a, embedding_rows=int(cfg["vocab_size"])))
    for key, entry in kv_overrides.items():
        if entry is None:
            meta.pop(key, None)
        else:
            meta[key] = entry
    return meta, plans, handles.clear

