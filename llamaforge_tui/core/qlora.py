"""Fill a transformers model skeleton straight from a GGUF, keeping linear and embedding weights quantized.

The skeleton comes from the loader (built on the ``meta`` device, or an empty model); the architecture-specific
knowledge (GGUF -> HF tensor names, and the transforms llama.cpp's converter applied) comes from the caller as two
callables, so this module stays architecture-agnostic. A transform is applied to quantized bytes only when it is a
pure row permutation (llama's q/k rotary permutation): that is detected by probing the transform with a row-index
tensor, and then whole rows of blocks are moved, which is exact because GGUF blocks never cross rows. Any other
transform (Gemma's norm +1 is on F32 vectors) runs on dequantized values, and those tensors stay in full precision.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from llamaforge_tui.core import quants
from llamaforge_tui.core.errors import GgufError
from llamaforge_tui.core.quantized import base_weight_bytes

if TYPE_CHECKING:
    import torch
    from torch import nn

    from llamaforge_tui.core.gguf_file import GgufFile, TensorInfo

log = logging.getLogger(__name__)

NameMap = Callable[[str], "str | None"]
Transform = Callable[[str, "torch.Tensor"], "torch.Tensor"]  # (gguf_name, tensor) -> HF layout


@dataclass
class QuantizedFill:
    """What ``fill_quantized_model`` did, for the source description and the memory check."""

    quantized: list[str] = field(default_factory=list)  # HF module names now holding GGUF blocks
    full_precision: list[str] = field(default_factory=list)  # HF parameter names loaded dequantized
    tied_output: bool = False
    base_bytes: int = 0  # bytes of the frozen base held in memory (see quantized.base_weight_bytes)
    gguf_tensor_bytes: int = 0


def row_permutation(transform: Transform, name: str, shape: tuple[int, ...]) -> "torch.Tensor | None":
    """If ``transform`` only reorders rows of a (rows, cols) tensor, return the row order; None for identity.

    Raises ValueError when the transform does anything else (then the caller loads the tensor dequantized).
    """
    import torch

    rows, cols = shape[0], min(shape[1], 4)  # a few columns suffice to see that whole rows move together
    probe = torch.arange(rows, dtype=torch.float64).unsqueeze(1).expand(rows, cols).contiguous()
    out = transform(name, probe.clone())
    if tuple(out.shape) != (rows, cols) or not torch.equal(out, out[:, :1].expand(rows, cols)):
        raise ValueError(f"transform of {name} is not a row permutation")
    perm = out[:, 0].round().to(torch.long)
    if not torch.equal(perm.sort().values, torch.arange(rows)) or not torch.equal(perm.to(out.dtype), out[:, 0]):
        raise ValueError(f"transform of {name} is not a row permutation")
    if torch.equal(perm, torch.arange(rows)):
        return None
    return perm


def _raw_rows(gguf: GgufFile, info: TensorInfo, device: "torch.device") -> "torch.Tensor":
    """The tensor's bytes as (rows, row_bytes) uint8, copied out of the memory map onto ``device``."""
    import torch

    data = np.array(gguf.tensor_bytes(info), copy=True)
    rows = int(np.prod(info.shape[:-1])) if len(info.shape) > 1 else 1
    return torch.from_numpy(data).reshape(rows, -1).to(device)


def _set_param(model: nn.Module, hf_name: str, value: "torch.Tensor") -> None:
    import torch

    module_name, _, attr = hf_name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    if attr in module._buffers:
        module._buffers[attr] = value
    else:
        module._parameters[attr] = torch.nn.Parameter(value, requires_grad=False)


def _embed_scale(module: nn.Module) -> Any:
    scale = getattr(module, "scalar_embed_scale", None)
    if scale is not None:
        return float(scale)
    buf = getattr(module, "embed_scale", None)
    if buf is not None and hasattr(buf, "device") and buf.device.type != "meta":
        return buf.detach().float().cpu()
    return None


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _materialize_meta_buffers(model: nn.Module, device: "torch.device") -> None:
    """Recreate non-persistent buffers (rotary inv_freq...) that a meta-device skeleton left without data."""
    import torch

    for name, module in list(model.named_modules()):
        if not any(b is not None and b.device.type == "meta" for b in module._buffers.values()):
            continue
        config = getattr(module, "config", None)
        if config is None or any(True for _ in module.parameters(recurse=False)):
            raise GgufError(f"cannot materialize buffers of {name} ({type(module).__name__}) built on the meta device")
        with torch.device("cpu"):
            fresh = type(module)(config)
        _replace(model, name, fresh.to(device))


def fill_quantized_model(
    model: nn.Module,
    gguf: GgufFile,
    hf_name_for: NameMap,
    transform: Transform | None = None,
    *,
    dtype: "torch.dtype | None" = None,
    device: "torch.device | str" = "cpu",
    chunk_elements: int | None = None,
) -> QuantizedFill:
    """Load every GGUF tensor into ``model``: Linear/Embedding weights as raw GGUF blocks, the rest dequantized.

    ``hf_name_for(gguf_name)`` gives the HF parameter name (None to skip a tensor); ``transform(gguf_name, tensor)``
    turns a dequantized GGUF tensor (numpy order) into the HF layout. ``dtype`` is the compute dtype (norms and
    other full-precision tensors are stored in it, like the dequantized path). Output heads tied to the embedding
    share the embedding's bytes. The model is left frozen (``requires_grad=False`` everywhere).
    """
    import torch
    from torch import nn

    from llamaforge_tui.core.quantized import DEFAULT_CHUNK_ELEMENTS, QuantEmbedding, QuantLinear, permute_rows

    dtype = torch.float32 if dtype is None else dtype
    device = torch.device(device)
    chunk = DEFAULT_CHUNK_ELEMENTS if chunk_elements is None else chunk_elements
    identity: Transform = lambda _name, t: t  # noqa: E731
    transform = transform or identity
    fill = QuantizedFill()
    embeddings: dict[str, nn.Module] = {}

    for info in gguf.tensors:
        hf_name = hf_name_for(info.name)
        if hf_name is None:
            continue
        fill.gguf_tensor_bytes += info.nbytes
        module_name, _, attr = hf_name.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        qtype = quants.quant_type(info.ggml_type)
        is_matrix = attr == "weight" and len(info.shape) == 2 and isinstance(module, (nn.Linear, nn.Embedding))
        perm = None
        if is_matrix:
            try:
                perm = row_permutation(transform, info.name, tuple(info.shape))
            except ValueError:
                is_matrix = False
        if not is_matrix:
            raw = torch.from_numpy(np.array(gguf.tensor_bytes(info), copy=True))
            value = transform(info.name, quants.dequantize(raw, qtype, tuple(info.shape)))
            _set_param(model, hf_name, value.to(device=device, dtype=dtype).contiguous())
            fill.full_precision.append(hf_name)
            continue
        rows = _raw_rows(gguf, info, device)
        if perm is not None:
            rows = permute_rows(rows, perm)
        if isinstance(module, nn.Embedding):
            new: nn.Module = QuantEmbedding(
                rows, qtype, info.shape[1], padding_idx=module.padding_idx, compute_dtype=dtype,
                embed_scale=_embed_scale(module),
            )
            embeddings[module_name] = new
        else:
            bias = getattr(module, "bias", None)
            new = QuantLinear(rows, qtype, info.shape[1], chunk_elements=chunk)
            if bias is not None:  # filled later (or already) by its own GGUF tensor
                new.bias = nn.Parameter(bias.detach(), requires_grad=False) if bias.device.type != "meta" else bias
        _replace(model, module_name, new)
        fill.quantized.append(module_name)

    _tie_output_head(model, embeddings, fill, chunk)
    _materialize_meta_buffers(model, device)
    missing = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if missing:
        raise GgufError(f"the GGUF has no tensor for {len(missing)} model parameters, e.g. {missing[:3]}")
    model.requires_grad_(False)
    fill.base_bytes = base_weight_bytes(model)
    return fill


def _tie_output_head(model: nn.Module, embeddings: dict[str, nn.Module], fill: QuantizedFill, chunk: int) -> None:
    """A GGUF without ``output.weight`` reuses the token embedding as the head: share its bytes, copy nothing."""
    from torch import nn

    from llamaforge_tui.core.quantized import QuantLinear, is_quantized_module

    get_out = getattr(model, "get_output_embeddings", None)
    head = get_out() if callable(get_out) else None
    if head is None or is_quantized_module(head) or not isinstance(head, nn.Linear):
        return
    if head.weight is None or head.weight.device.type != "meta":
        return
    get_in = getattr(model, "get_input_embeddings", None)
    emb = get_in() if callable(get_in) else None
    if emb is None or not is_quantized_module(emb):
        raise GgufError("the GGUF has no output head and no quantized token embedding to tie it to")
    new = QuantLinear(emb.qweight, emb.qtype, emb.embedding_dim, chunk_elements=chunk)
    for name, module in model.named_modules():
        if module is head:
            _replace(model, name, new)
            fill.quantized.append(name)
            break
    fill.tied_output = True


def load_quantized_from_gguf(
    model: nn.Module,
    gguf: GgufFile,
    *,
    arch: str | None = None,
    dtype: "torch.dtype | None" = None,
    device: "torch.device | str" = "cpu",
) -> QuantizedFill:
    """``fill_quantized_model`` with the architecture's own names and inverse transforms (``core.arch``).

    ``model`` is the skeleton built from ``arch.config_from_gguf`` (meta device is fine). Llama's q/k permutation
    becomes a row permutation of the raw blocks; Gemma's norm offset applies to the (F32) norms in full precision.
    """
    from llamaforge_tui.core import arch as archmod

    spec = archmod.arch_spec(arch) if arch else archmod.detect_architecture(gguf)
    config = model.config

    def hf_name_for(gguf_name: str) -> str | None:
        return archmod.gguf_to_hf_name(spec.name, gguf_name)

    def transform(gguf_name: str, tensor: "torch.Tensor") -> "torch.Tensor":
        return archmod.gguf_tensor_to_hf(spec.name, gguf_name, tensor, config)[1]

    return fill_quantized_model(model, gguf, hf_name_for, transform, dtype=dtype, device=device)
