"""Per-architecture knowledge shared by loading (GGUF -> transformers) and export (transformers -> GGUF).

llama.cpp's converter (``convert_hf_to_gguf.py``, ``conversion/*.py``) renames tensors and changes some values on
the way to GGUF. Loading undoes each change and export redoes it; the tensor names and value changes, both
directions side by side, are in ``tensor_names``. This module holds the architectures and their configs:

- llama / mistral: the rows of ``q_proj``/``k_proj`` are permuted for llama.cpp's interleaved (GPT-J style) rotary
  embedding; transformers uses the half-split (NeoX) layout. ``permute_qk``/``unpermute_qk``.
- gemma2 / gemma3: RMSNorm weights are stored as ``1 + w`` (transformers' Gemma norm multiplies by ``1 + w``).
- tied embeddings: no ``output.weight`` in the GGUF means ``tie_word_embeddings``.
- phi3: fused ``qkv_proj``/``gate_up_proj`` map one-to-one to ``attn_qkv``/``ffn_up``.
- llama 3.x: ``rope_freqs.weight`` holds the per-frequency rope divisors (see :func:`rope_freq_factors`).

Nothing here imports torch at module level; tensor functions accept torch tensors or numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llamaforge_tui.core.errors import GgufError

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from llamaforge_tui.core.gguf.file import GgufFile

SUPPORTED_ARCHITECTURES: frozenset[str] = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3"})


@dataclass(frozen=True)
class ArchSpec:
    name: str  # our name (also the HF-side family): llama, mistral, ...
    gguf_arch: str  # general.architecture in the GGUF
    model_type: str  # transformers config model_type
    permute_qk: bool  # llama.cpp permuted q/k rows for interleaved rope
    norm_offset: float  # added to every *norm.weight by the converter
    gemma_norms: bool  # pre/post attention + feed-forward norms (Gemma 2/3 block layout)
    qk_norm: bool  # per-head q/k RMSNorm (qwen3, gemma3)
    fused_qkv: bool  # phi3


ARCH_SPECS: dict[str, ArchSpec] = {
    "llama": ArchSpec("llama", "llama", "llama", True, 0.0, False, False, False),
    "mistral": ArchSpec("mistral", "llama", "mistral", True, 0.0, False, False, False),
    "qwen2": ArchSpec("qwen2", "qwen2", "qwen2", False, 0.0, False, False, False),
    "qwen3": ArchSpec("qwen3", "qwen3", "qwen3", False, 0.0, False, True, False),
    "gemma2": ArchSpec("gemma2", "gemma2", "gemma2", False, 1.0, True, False, False),
    "gemma3": ArchSpec("gemma3", "gemma3", "gemma3_text", False, 1.0, True, True, False),
    "phi3": ArchSpec("phi3", "phi3", "phi3", False, 0.0, False, False, True),
}
_BY_MODEL_TYPE = {spec.model_type: spec for spec in ARCH_SPECS.values()}
_BY_MODEL_TYPE["gemma3"] = ARCH_SPECS["gemma3"]


def arch_spec(name: str) -> ArchSpec:
    """The spec for our arch name, a GGUF arch or a transformers model_type; a clear error otherwise."""
    spec = ARCH_SPECS.get(name) or _BY_MODEL_TYPE.get(name)
    if spec is None:
        raise GgufError(
            f"architecture {name!r} is not supported yet (supported: {', '.join(sorted(SUPPORTED_ARCHITECTURES))})"
        )
    return spec


def detect_architecture(gguf: GgufFile) -> ArchSpec:
    """Our arch for a GGUF. Mistral models are ``llama`` in GGUF; like transformers, tell them apart by name."""
    arch = gguf.architecture
    if arch is None:
        raise GgufError(f"{gguf.path}: no general.architecture in this GGUF")
    if arch == "llama" and "mistral" in str(gguf.get("general.name", "") or "").lower():
        return ARCH_SPECS["mistral"]
    if arch not in SUPPORTED_ARCHITECTURES or arch == "mistral":
        raise GgufError(
            f"architecture {arch!r} is not supported yet (supported: {', '.join(sorted(SUPPORTED_ARCHITECTURES))})"
        )
    return ARCH_SPECS[arch]


# -- config ---------------------------------------------------------------------------------------------------------


def config_dict_from_gguf(gguf: GgufFile, spec: ArchSpec | None = None) -> dict[str, Any]:
    """Keyword arguments for the transformers config, from the GGUF's hyper-parameters.

    Values llama.cpp hard-codes rather than stores (Gemma 3's sliding-window pattern and local rope base, Gemma's
    query scaling) are filled in the same way llama.cpp does, so both runtimes compute the same function.
    """
    spec = spec or detect_architecture(gguf)
    a = gguf.architecture

    def kv(key: str, default: Any = None) -> Any:
        return gguf.get(f"{a}.{key}", default)

    n_layers = kv("block_count")
    hidden = kv("embedding_length")
    n_head = kv("attention.head_count")
    if not all(isinstance(v, int) and v > 0 for v in (n_layers, hidden)) or n_head is None:
        raise GgufError(f"{gguf.path}: missing block_count/embedding_length/head_count metadata for {a}")
    if isinstance(n_head, list):
        raise GgufError(f"{gguf.path}: per-layer head counts are not supported")
    n_kv = kv("attention.head_count_kv", n_head)
    if isinstance(n_kv, list):
        raise GgufError(f"{gguf.path}: per-layer key/value head counts are not supported")
    head_dim = kv("attention.key_length") or hidden // n_head
    embd = gguf.tensor("token_embd.weight")
    cfg: dict[str, Any] = {
        "vocab_size": embd.shape[0],
        "hidden_size": hidden,
        "intermediate_size": kv("feed_forward_length"),
        "num_hidden_layers": n_layers,
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "rms_norm_eps": float(kv("attention.layer_norm_rms_epsilon", 1e-6)),
        "max_position_embeddings": kv("context_length", 4096),
        "rope_theta": float(kv("rope.freq_base", 10000.0)),
        "tie_word_embeddings": not gguf.has_tensor("output.weight"),
    }
    for role, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("padding", "pad_token_id")):
        value = gguf.get(f"tokenizer.ggml.{role}_token_id")
        # explicit None rather than a config class default (Phi-3's pad 32000 would not even fit a small vocab)
        cfg[key] = value if isinstance(value, int) and 0 <= value < embd.shape[0] else None
    if spec.name in ("llama", "mistral", "qwen2"):
        cfg["attention_bias"] = gguf.has_tensor("blk.0.attn_q.bias")
    if spec.name == "qwen2":
        cfg.pop("attention_bias")  # qwen2 always has q/k/v biases
    if spec.name == "mistral":
        cfg["sliding_window"] = kv("attention.sliding_window")  # usually absent: full attention, like llama.cpp
    if spec.name == "gemma2":
        cfg["sliding_window"] = kv("attention.sliding_window", 4096)
        cfg["attn_logit_softcapping"] = kv("attn_logit_softcapping", 50.0)
        cfg["final_logit_softcapping"] = kv("final_logit_softcapping", 30.0)
        cfg["query_pre_attn_scalar"] = hidden // n_head if n_layers == 46 else head_dim  # llama.cpp: 27B differs
    if spec.name == "gemma3":
        window = kv("attention.sliding_window")
        pattern = kv("attention.sliding_window_pattern", 6)
        if isinstance(pattern, list):
            cfg["layer_types"] = ["sliding_attention" if swa else "full_attention" for swa in pattern]
        elif window:
            cfg["layer_types"] = [
                "sliding_attention" if (pattern == 0 or i % pattern < pattern - 1) else "full_attention"
                for i in range(n_layers)
            ]
        else:
            cfg["layer_types"] = ["full_attention"] * n_layers
        cfg["sliding_window"] = window or 4096
        cfg["query_pre_attn_scalar"] = hidden // n_head if n_layers == 62 else head_dim
        cfg["final_logit_softcapping"] = kv("final_logit_softcapping") or None
        cfg["attn_logit_softcapping"] = None
        theta = cfg.pop("rope_theta")
        full: dict[str, Any] = {"rope_type": "default", "rope_theta": theta}
        factor = kv("rope.scaling.factor")
        if factor and kv("rope.scaling.type", "linear") == "linear" and factor != 1.0:
            full = {"rope_type": "linear", "rope_theta": theta, "factor": float(factor)}
        cfg["rope_parameters"] = {
            "full_attention": full,
            "sliding_attention": {"rope_type": "default", "rope_theta": float(kv("rope.freq_base_swa", 10000.0))},
        }
    if spec.name == "phi3":
        cfg.pop("head_dim")
        n_rot = kv("rope.dimension_count", head_dim)
        cfg["partial_rotary_factor"] = n_rot / head_dim
        cfg["sliding_window"] = None  # llama.cpp disables Phi-3 SWA
        orig = kv("rope.scaling.original_context_length")
        if gguf.has_tensor("rope_factors_long.weight") and orig:
            cfg["original_max_position_embeddings"] = orig
            theta = cfg.pop("rope_theta")
            cfg["rope_parameters"] = {
                "rope_type": "longrope",
                "rope_theta": theta,
                "long_factor": _vector(gguf, "rope_factors_long.weight"),
                "short_factor": _vector(gguf, "rope_factors_short.weight"),
                "original_max_position_embeddings": orig,
            }
    if cfg.get("intermediate_size") is None:
        raise GgufError(f"{gguf.path}: missing {a}.feed_forward_length")
    return cfg


def _vector(gguf: GgufFile, name: str) -> list[float]:
    info = gguf.tensor(name)
    return [float(x) for x in gguf.tensor_array(info).astype("float32").ravel()]


def config_from_gguf(gguf: GgufFile, spec: ArchSpec | None = None) -> PretrainedConfig:
    from transformers import AutoConfig

    spec = spec or detect_architecture(gguf)
    cfg = config_dict_from_gguf(gguf, spec)
    config = AutoConfig.for_model(spec.model_type, **cfg)
    config.architectures = [_causal_lm_class(spec)]
    return config


def _causal_lm_class(spec: ArchSpec) -> str:
    return {
        "llama": "LlamaForCausalLM",
        "mistral": "MistralForCausalLM",
        "qwen2": "Qwen2ForCausalLM",
        "qwen3": "Qwen3ForCausalLM",
        "gemma2": "Gemma2ForCausalLM",
        "gemma3": "Gemma3ForCausalLM",
        "phi3": "Phi3ForCausalLM",
    }[spec.name]


def _cfg(config: Any, key: str) -> Any:
    return config.get(key) if isinstance(config, dict) else getattr(config, key, None)


def rope_freq_factors(gguf: GgufFile) -> Any | None:
    """Llama 3.x stores its rope scaling as per-frequency divisors in ``rope_freqs.weight``; llama.cpp divides each
    rotary frequency by them. Returns them as a float32 numpy vector, or None."""
    if not gguf.has_tensor("rope_freqs.weight"):
        return None
    info = gguf.tensor("rope_freqs.weight")
    return gguf.tensor_array(info).astype("float32").ravel().copy()


def head_dim_of(config: Any) -> int:
    hd = _cfg(config, "head_dim")
    return int(hd) if hd else int(_cfg(config, "hidden_size")) // int(_cfg(config, "num_attention_heads"))


def expected_parameter_count(config: Any) -> int:
    """Rough parameter count from a config (used by memory estimates before any weight is read)."""
    h = int(_cfg(config, "hidden_size"))
    n = int(_cfg(config, "num_hidden_layers"))
    v = int(_cfg(config, "vocab_size"))
    ff = int(_cfg(config, "intermediate_size"))
    heads = int(_cfg(config, "num_attention_heads"))
    kv = int(_cfg(config, "num_key_value_heads") or heads)
    hd = head_dim_of(config)
    attn = h * hd * (heads * 2 + kv * 2)
    per_layer = attn + 3 * h * ff + 4 * h
    total = n * per_layer + v * h + h
    if not _cfg(config, "tie_word_embeddings"):
        total += v * h
    return int(total)


__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "ARCH_SPECS",
    "ArchSpec",
    "arch_spec",
    "detect_architecture",
    "config_dict_from_gguf",
    "config_from_gguf",
    "rope_freq_factors",
    "expected_parameter_count",
]
