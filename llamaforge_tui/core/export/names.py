"""Export's view of ``core/arch.py``: GGUF names for LoRA targets, and their deltas' row order.

Export only maps *linear* weights (LoRA targets) and their deltas. The one value transform between HF and
GGUF layouts that touches them is llama's rope row permutation of q/k (FORMATS.md §2), which is linear, so
it applies to a delta (or to ``lora_b``) exactly as to the weight. Norm offsets never apply to a LoRA target.
"""

from __future__ import annotations

import numpy as np

from llamaforge_tui.core.gguf import arch as archmod

from llamaforge_tui.core.gguf import tensor_names
from llamaforge_tui.core.errors import LlamaForgeError


def gguf_name(arch: str, hf_name: str, n_layers: int) -> str | None:
    """``model.layers.0.self_attn.q_proj.weight`` -> ``blk.0.attn_q.weight`` (None when unknown)."""
    try:
        return tensor_names.hf_to_gguf_name(arch, hf_name, n_layers)
    except LlamaForgeError:
        return None


def to_gguf_rows(arch: str, gname: str, rows: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """Move a (out, ...) array whose rows follow an HF weight into the GGUF tensor's row order."""
    if archmod.arch_spec(arch).permute_qk and gname.startswith("blk."):
        if ".attn_q." in gname:
            return tensor_names.permute_qk(rows, n_head)
        if ".attn_k." in gname:
            return tensor_names.permute_qk(rows, n_head_kv)
    return rows
