"""HF weight names -> GGUF tensor names, and the row permutation LoRA deltas need on the way.

Kept small on purpose: export only maps *linear* weights (LoRA targets) and their deltas, for which the
one value transform between HF and GGUF layouts is llama's rope row permutation of q/k (FORMATS.md §2).
Norm offsets (Gemma ``w+1``) never apply to a LoRA target. ``core/arch.py`` (SOURCES) owns the full
two-way mapping; this module defers to it when it is present.
"""

from __future__ import annotations

from functools import lru_cache

import gguf
import numpy as np

# GGUF architectures whose q/k rows llama.cpp stores permuted for its rope layout.
PERMUTED_ARCHS = frozenset({"llama"})

# HF model type -> GGUF architecture (Mistral checkpoints convert as llama).
HF_TO_GGUF_ARCH = {
    "llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma2": "gemma2",
    "gemma3": "gemma3", "gemma3_text": "gemma3", "phi3": "phi3",
}


@lru_cache(maxsize=16)
def _name_map(arch: str, n_layers: int) -> gguf.TensorNameMap:
    for key, name in gguf.MODEL_ARCH_NAMES.items():
        if name == arch:
            return gguf.get_tensor_name_map(key, n_layers)
    raise KeyError(arch)


def gguf_name(arch: str, hf_name: str, n_layers: int) -> str | None:
    """``model.layers.0.self_attn.q_proj.weight`` -> ``blk.0.attn_q.weight`` (None when unknown)."""
    try:
        from llamaforge_tui.core import arch as arch_mod  # SOURCES' mapping, when present
    except ImportError:
        arch_mod = None
    if arch_mod is not None and hasattr(arch_mod, "hf_to_gguf_name"):
        try:
            found = arch_mod.hf_to_gguf_name(arch, hf_name, n_layers)
        except (KeyError, ValueError):
            found = None
        if found:
            return found
    try:
        nmap = _name_map(arch, n_layers)
    except KeyError:
        return None
    name = hf_name.removeprefix("base_model.model.")
    if name == "lm_head.weight":
        return "output.weight"
    return nmap.get_name(name, try_suffixes=(".weight", ".bias"))


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF -> llama.cpp rope layout: within each head, interleave the two halves of the rows."""
    rows = w.shape[0]
    d = rows // n_head
    return w.reshape(n_head, 2, d // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    rows = w.shape[0]
    d = rows // n_head
    return w.reshape(n_head, d // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def to_gguf_rows(arch: str, gname: str, rows: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """Move a (out, ...) array whose rows follow an HF weight into the GGUF tensor's row order."""
    if arch in PERMUTED_ARCHS:
        if gname.startswith("blk.") and ".attn_q." in gname:
            return permute_rows(rows, n_head)
        if gname.startswith("blk.") and ".attn_k." in gname:
            return permute_rows(rows, n_head_kv)
    return rows
