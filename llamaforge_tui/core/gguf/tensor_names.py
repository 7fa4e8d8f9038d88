"""GGUF tensor names <-> transformers parameter names, and the value changes llama.cpp's converter makes on the
way (q/k row permutation, Gemma's ``1 + w`` norms), in both directions: loading undoes them, export redoes them.

Nothing here imports torch at module level; tensor functions accept torch tensors or numpy arrays.
"""

from __future__ import annotations

import re
from typing import Any

from llamaforge_tui.core.gguf.arch import ArchSpec, arch_spec

# -- names ----------------------------------------------------------------------------------------------------------

_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_BLOCK_COMMON = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def _block_names(spec: ArchSpec) -> dict[str, str]:
    names = dict(_BLOCK_COMMON)
    if spec.gemma_norms:
        names.update(
            post_attention_norm="post_attention_layernorm",
            ffn_norm="pre_feedforward_layernorm",
            post_ffw_norm="post_feedforward_layernorm",
        )
    else:
        names["ffn_norm"] = "post_attention_layernorm"
    if spec.qk_norm:
        names.update(attn_q_norm="self_attn.q_norm", attn_k_norm="self_attn.k_norm")
    if spec.fused_qkv:
        for key in ("attn_q", "attn_k", "attn_v", "ffn_gate"):
            names.pop(key)
        names.update(attn_qkv="self_attn.qkv_proj", ffn_up="mlp.gate_up_proj")
    return names


_GGUF_RE = re.compile(r"^blk\.(\d+)\.([a-z_0-9]+)\.(weight|bias)$")
_HF_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)\.(weight|bias)$")

# GGUF tensors that are not parameters of the transformers model: they feed the config or the rotary embedding.
NON_PARAMETER_TENSORS = frozenset({"rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight"})


def gguf_to_hf_name(arch: str, gguf_name: str) -> str | None:
    """``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight``; None for non-parameter tensors."""
    spec = arch_spec(arch)
    base, _, suffix = gguf_name.rpartition(".")
    if base in _GLOBAL_NAMES and suffix in ("weight", "bias"):
        return f"{_GLOBAL_NAMES[base]}.{suffix}"
    m = _GGUF_RE.match(gguf_name)
    if m:
        hf = _block_names(spec).get(m.group(2))
        if hf is not None:
            return f"model.layers.{m.group(1)}.{hf}.{m.group(3)}"
    return None


def hf_to_gguf_name(arch: str, hf_name: str, n_layers: int | None = None) -> str | None:
    """The inverse of :func:`gguf_to_hf_name` (``n_layers`` is accepted for the contract; names do not need it)."""
    spec = arch_spec(arch)
    name = hf_name.removeprefix("base_model.model.")
    base, _, suffix = name.rpartition(".")
    for gguf, hf in _GLOBAL_NAMES.items():
        if base == hf:
            return f"{gguf}.{suffix}"
    m = _HF_RE.match(name)
    if m:
        if n_layers is not None and int(m.group(1)) >= n_layers:
            return None
        for gguf, hf in _block_names(spec).items():
            if hf == m.group(2):
                return f"blk.{m.group(1)}.{gguf}.{m.group(3)}"
    return None


# -- values ---------------------------------------------------------------------------------------------------------


def _cfg(config: Any, key: str) -> Any:
    return config.get(key) if isinstance(config, dict) else getattr(config, key, None)


def permute_qk(w: Any, n_head: int) -> Any:
    """llama.cpp's ``LlamaModel.permute``: half-split rope rows -> interleaved pairs (works on numpy and torch)."""
    shape = tuple(w.shape)
    x = w.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:])
    x = x.swapaxes(1, 2)
    return x.reshape(shape)


def unpermute_qk(w: Any, n_head: int) -> Any:
    """Inverse of :func:`permute_qk` (what transformers' ``LlamaTensorProcessor`` does)."""
    shape = tuple(w.shape)
    x = w.reshape(n_head, shape[0] // n_head // 2, 2, *shape[1:])
    x = x.swapaxes(1, 2)
    return x.reshape(shape)


def _qk_heads(spec: ArchSpec, gguf_name: str, config: Any) -> int | None:
    if not spec.permute_qk:
        return None
    n_head = _cfg(config, "num_attention_heads")
    n_kv = _cfg(config, "num_key_value_heads") or n_head
    if ".attn_q." in gguf_name:
        return n_head
    if ".attn_k." in gguf_name:
        return n_kv
    return None


def needs_fp32_transform(arch: str, gguf_name: str) -> bool:
    """True when the inverse transform does arithmetic (so it must run in fp32 before casting to the target dtype);
    permutations are exact in any dtype."""
    spec = arch_spec(arch)
    return bool(spec.norm_offset) and gguf_name.endswith("norm.weight")


def gguf_tensor_to_hf(arch: str, gguf_name: str, tensor: Any, config: Any) -> tuple[str | None, Any]:
    """(hf_name, tensor) for a dequantized GGUF tensor in numpy order; hf_name is None for non-parameters."""
    spec = arch_spec(arch)
    hf_name = gguf_to_hf_name(arch, gguf_name)
    heads = _qk_heads(spec, gguf_name, config)
    if heads:
        tensor = unpermute_qk(tensor, heads)
    if spec.norm_offset and gguf_name.endswith("norm.weight"):
        tensor = tensor - spec.norm_offset
    return hf_name, tensor


def hf_tensor_to_gguf(arch: str, hf_name: str, tensor: Any, config: Any) -> tuple[str | None, Any]:
    """(gguf_name, tensor) ready to quantize and write, the inverse of :func:`gguf_tensor_to_hf`.

    ``lm_head.weight`` of a tied model maps to None (the GGUF has no ``output.weight`` then)."""
    spec = arch_spec(arch)
    gguf_name = hf_to_gguf_name(arch, hf_name)
    if gguf_name is None:
        return None, tensor
    if gguf_name == "output.weight" and _cfg(config, "tie_word_embeddings"):
        return None, tensor
    if spec.norm_offset and gguf_name.endswith("norm.weight"):
        tensor = tensor + spec.norm_offset
    heads = _qk_heads(spec, gguf_name, config)
    if heads:
        tensor = permute_qk(tensor, heads)
    return gguf_name, tensor


def to_gguf_tensor(arch: str, hf_name: str, tensor: Any, config: Any) -> tuple[str | None, Any]:
    """Alias of :func:`hf_tensor_to_gguf` (the name in the cross-module contract)."""
    return hf_tensor_to_gguf(arch, hf_name, tensor, config)


__all__ = ["NON_PARAMETER_TENSORS", "gguf_to_hf_name", "hf_to_gguf_name", "permute_qk", "unpermute_qk", "needs_fp32_transform", "gguf_tensor_to_hf", "hf_tensor_to_gguf", "to_gguf_tensor"]
