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
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO

from llamaforge_tui.core.gguf import quants
from llamaforge_tui.core.errors import GgufError, LlamaForgeError
from llamaforge_tui.core.model.quantized import base_weight_bytes

if TYPE_CHECKING:
    import torch
    from gguf import GGMLQuantizationType
    from torch import nn

    from llamaforge_tui.core.gguf.file import GgufFile, TensorInfo

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


def _read_tensor(fh: BinaryIO, info: TensorInfo) -> "torch.Tensor":
    """A tensor's bytes as a flat uint8 tensor, read with plain reads rather than through the memory map, so the
    file's pages do not stay in our RSS next to the copy we keep."""
    import torch

    out = torch.empty(info.nbytes, dtype=torch.uint8)
    view = memoryview(out.numpy())
    fh.seek(info.offset)
    got = 0
    while got < info.nbytes:
        n = fh.readinto(view[got:])
        if not n:
            raise GgufError(f"{fh.name}: truncated while reading {info.name} at offset {info.offset + got}")
        got += n
    return out


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
    progress: Callable[[int, int], None] | None = None,
    stop_event: threading.Event | None = None,
) -> QuantizedFill:
    """Load every GGUF tensor into ``model``: Linear/Embedding weights as raw GGUF blocks, the rest dequantized.

    ``hf_name_for(gguf_name)`` gives the HF parameter name (None to skip a tensor); ``transform(gguf_name, tensor)``
    turns a dequantized GGUF tensor (numpy order) into the HF layout. ``dtype`` is the compute dtype (norms and
    other full-precision tensors are stored in it, like the dequantized path). Output heads tied to the embedding
    share the embedding's bytes. The model is left frozen (``requires_grad=False`` everywhere).
    ``progress(done_bytes, total_bytes)`` is called after each tensor; setting ``stop_event`` cancels the load.
    """
    import torch

    from llamaforge_tui.core.model.quantized import DEFAULT_CHUNK_ELEMENTS

    loader = _Filler(
        model, torch.float32 if dtype is None else dtype, torch.device(device),
        DEFAULT_CHUNK_ELEMENTS if chunk_elements is None else chunk_elements,
        transform or (lambda _name, t: t),
    )
    total = sum(t.nbytes for t in gguf.tensors)
    done = 0
    with open(gguf.path, "rb", buffering=0) as fh:
        for info in gguf.tensors:
            if stop_event is not None and stop_event.is_set():
                raise LlamaForgeError("loading cancelled")
            hf_name = hf_name_for(info.name)
            if hf_name is not None:
                loader.load(info, hf_name, _read_tensor(fh, info))
            done += info.nbytes
            if progress is not None:
                progress(done, total)
    return loader.finish()


class _Filler:
    """The per-tensor steps of ``fill_quantized_model`` (kept apart so each one reads on one screen)."""

    def __init__(self, model: nn.Module, dtype: "torch.dtype", device: "torch.device", chunk: int,
                 transform: Transform) -> None:
        self.model, self.dtype, self.device, self.chunk, self.transform = model, dtype, device, chunk, transform
        self.fill = QuantizedFill()

    def load(self, info: TensorInfo, hf_name: str, raw: "torch.Tensor") -> None:
        from torch import nn

        self.fill.gguf_tensor_bytes += info.nbytes
        module_name, _, attr = hf_name.rpartition(".")
        module = self.model.get_submodule(module_name) if module_name else self.model
        qtype = quants.quant_type(info.ggml_type)
        raw = raw.to(self.device)
        if attr == "weight" and len(info.shape) == 2 and isinstance(module, (nn.Linear, nn.Embedding)):
            try:
                perm = row_permutation(self.transform, info.name, tuple(info.shape))
            except ValueError:
                log.info("%s: transform is not a row permutation; keeping it in full precision", info.name)
            else:
                self._quantized(module_name, module, info, qtype, raw.reshape(info.shape[0], -1), perm)
                return
        value = self.transform(info.name, quants.dequantize(raw, qtype, tuple(info.shape)))
        _set_param(self.model, hf_name, value.to(dtype=self.dtype).contiguous())
        self.fill.full_precision.append(hf_name)

    def _quantized(self, module_name: str, module: nn.Module, info: TensorInfo, qtype: GGMLQuantizationType,
                   rows: "torch.Tensor", perm: "torch.Tensor | None") -> None:
        from torch import nn

        from llamaforge_tui.core.model.quantized import QuantEmbedding, QuantLinear, permute_rows

        if perm is not None:
            rows = permute_rows(rows, perm)
        if isinstance(module, nn.Embedding):
            new: nn.Module = QuantEmbedding(
                rows, qtype, info.shape[1], padding_idx=module.padding_idx, compute_dtype=self.dtype,
                embed_scale=_embed_scale(module),
            )
        else:
            new = QuantLinear(rows, qtype, info.shape[1], chunk_elements=self.chunk)
            bias = getattr(module, "bias", None)
            if bias is not None:  # keep the slot (or the value) for the bias's own GGUF tensor
                new.bias = bias if bias.device.type == "meta" else nn.Parameter(bias.detach(), requires_grad=False)
        _replace(self.model, module_name, new)
        self.fill.quantized.append(module_name)

    def finish(self) -> QuantizedFill:
        _tie_output_head(self.model, self.fill, self.chunk)
        _materialize_meta_buffers(self.model, self.device)
        missing = [n for n, p in self.model.named_parameters() if p.device.type == "meta"]
        if missing:
            raise GgufError(f"the GGUF has no tensor for {len(missing)} model parameters, e.g. {missing[:3]}")
        self.model.requires_grad_(False)
        self.fill.base_bytes = base_weight_bytes(self.model)
        return self.fill


def _tie_output_head(model: nn.Module, fill: QuantizedFill, chunk: int) -> None:
    """A GGUF without ``output.weight`` reuses the token embedding as the head: share its bytes, copy nothing."""
    from torch import nn

    from llamaforge_tui.core.model.quantized import QuantLinear, is_quantized_module

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
    progress: Callable[[int, int], None] | None = None,
    stop_event: threading.Event | None = None,
) -> QuantizedFill:
    """``fill_quantized_model`` with the architecture's own names and inverse transforms (``core.arch``).

    ``model`` is the skeleton built from ``arch.config_from_gguf`` (meta device is fine). Llama's q/k permutation
    becomes a row permutation of the raw blocks; Gemma's norm offset applies to the (F32) norms in full precision.
    """
    from llamaforge_tui.core.gguf import arch as archmod
    from llamaforge_tui.core.gguf import tensor_names

    spec = archmod.arch_spec(arch) if arch else archmod.detect_architecture(gguf)
    config = model.config

    def hf_name_for(gguf_name: str) -> str | None:
        if gguf_name in tensor_names.NON_PARAMETER_TENSORS:  # rope_freqs: the loader applies them to the rotary buffers
            return None
        return tensor_names.gguf_to_hf_name(spec.name, gguf_name)

    def transform(gguf_name: str, tensor: "torch.Tensor") -> "torch.Tensor":
        return tensor_names.gguf_tensor_to_hf(spec.name, gguf_name, tensor, config)[1]

    return fill_quantized_model(model, gguf, hf_name_for, transform, dtype=dtype, device=device, progress=progress,
                                stop_event=stop_event)
