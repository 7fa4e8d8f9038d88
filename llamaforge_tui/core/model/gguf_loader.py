"""Streaming GGUF tensors into a transformers model skeleton (the engine behind ``loading.load_model``).

The model is built with its parameters on the ``meta`` device (buffers such as rotary frequencies stay real); each
GGUF tensor is then read with a plain file read, dequantized in torch (on the target device, straight to the target
dtype unless its inverse transform needs fp32 arithmetic), un-transformed (``arch.py``) and set as the parameter, one
at a time. Peak memory is the final model plus about one tensor.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from llamaforge_tui.core.gguf import arch as archmod

from llamaforge_tui.core.gguf import tensor_names
from llamaforge_tui.core.errors import GgufError, LlamaForgeError
from llamaforge_tui.core.gguf.file import GgufFile

if TYPE_CHECKING:
    import threading

    import torch
    from transformers import PreTrainedModel

Progress = Callable[[int, int], None]  # (bytes done, bytes total)
log = logging.getLogger(__name__)


@contextlib.contextmanager
def params_on_meta() -> Iterator[None]:
    """Build modules with parameters on the meta device but real buffers (rotary frequencies, Gemma's embedding
    scale): parameters are replaced by GGUF tensors anyway, buffers are computed from the config.

    ``nn.Module.register_parameter`` is patched for the duration, but only the calling thread is affected: a TUI
    may build other modules in other threads meanwhile."""
    import threading

    import torch
    from torch import nn

    original = nn.Module.register_parameter
    owner = threading.get_ident()

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta" and threading.get_ident() == owner:
            param = nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        with torch.device("cpu"):
            yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def build_skeleton(config: Any, dtype: torch.dtype) -> PreTrainedModel:
    """A causal LM for ``config`` with meta parameters, in ``dtype``."""
    from transformers import AutoModelForCausalLM

    with params_on_meta():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=False)
    return model


def check_gguf_loadable(gguf: GgufFile, weights: str = "gguf") -> archmod.ArchSpec:
    """Everything that can be checked before reading tensor data: architecture, tensor names, quant types."""
    from llamaforge_tui.core.gguf import quants

    spec = archmod.detect_architecture(gguf)
    unknown = [
        t.name for t in gguf.tensors
        if t.name not in tensor_names.NON_PARAMETER_TENSORS and tensor_names.gguf_to_hf_name(spec.name, t.name) is None
    ]
    if unknown:
        raise GgufError(
            f"{gguf.path}: {len(unknown)} tensor(s) have no place in a {spec.name} model, e.g. {', '.join(unknown[:3])}"
        )
    bad = sorted({t.ggml_type.name for t in gguf.tensors if t.ggml_type not in quants.SUPPORTED_TYPES})
    if bad:
        supported = ", ".join(sorted(t.name for t in quants.SUPPORTED_TYPES))
        raise GgufError(f"{gguf.path}: quantization type(s) {', '.join(bad)} not supported (supported: {supported})")
    if not gguf.has_tensor("token_embd.weight"):
        raise GgufError(f"{gguf.path}: no token_embd.weight tensor")
    return spec


def _read_raw(fh: Any, offset: int, nbytes: int) -> torch.Tensor:
    """Read a tensor's bytes with a plain read (not the memory map), so file pages do not pile up in our RSS."""
    import torch

    buf = bytearray(nbytes)
    fh.seek(offset)
    view = memoryview(buf)
    got = 0
    while got < nbytes:
        n = fh.readinto(view[got:])
        if not n:
            raise GgufError(f"{fh.name}: truncated while reading tensor data at offset {offset + got}")
        got += n
    return torch.frombuffer(buf, dtype=torch.uint8) if nbytes else torch.empty(0, dtype=torch.uint8)


def _set_parameter(model: Any, hf_name: str, value: torch.Tensor) -> None:
    from torch import nn

    module_name, _, attr = hf_name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    old = module._parameters.get(attr)
    if old is None and attr not in module._parameters:
        raise GgufError(f"the model has no parameter {hf_name}")
    if old is not None and tuple(old.shape) != tuple(value.shape):
        raise GgufError(f"{hf_name}: GGUF tensor has shape {tuple(value.shape)}, the model expects {tuple(old.shape)}")
    module._parameters[attr] = nn.Parameter(value, requires_grad=True)


def _apply_rope_freqs(model: Any, factors: Any, device: torch.device) -> None:
    """Llama 3.x: divide every rotary frequency by llama.cpp's per-frequency factor (exactly what transformers'
    ``llama3`` rope scaling computes, without having to guess its four parameters)."""
    import torch

    for module in model.modules():
        inv = getattr(module, "inv_freq", None)
        if isinstance(inv, torch.Tensor) and inv.shape[-1] == len(factors):
            f = torch.as_tensor(factors, dtype=inv.dtype, device=inv.device)
            module.inv_freq = inv / f
            if isinstance(getattr(module, "original_inv_freq", None), torch.Tensor):
                module.original_inv_freq = module.inv_freq.clone()


@contextlib.contextmanager
def load_threads() -> Iterator[int]:
    """Use only the CPU threads that are idle while dequantizing.

    torch's intra-op threads spin-wait for each other; on a busy machine (a shared CI box, or a TUI that is also
    training) an oversubscribed pool made small-tensor dequantization 10x slower than one thread.
    """
    import torch

    before = torch.get_num_threads()
    try:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        idle = int(cpus - os.getloadavg()[0] + 0.5)
    except (OSError, AttributeError):
        idle = before
    wanted = max(1, min(before, idle))
    if wanted != before:
        torch.set_num_threads(wanted)
    try:
        yield wanted
    finally:
        if wanted != before:
            torch.set_num_threads(before)


def load_gguf_weights(model: Any, gguf: GgufFile, spec: archmod.ArchSpec, config: Any, *,
                      dtype: torch.dtype, device: torch.device, progress: Progress | None = None,
                      stop_event: threading.Event | None = None) -> None:
    """Stream every GGUF tensor into ``model``'s meta parameters (dequantize -> un-transform -> cast -> set)."""
    import torch

    from llamaforge_tui.core.gguf import quants

    total = sum(t.nbytes for t in gguf.tensors)
    done = 0
    with open(gguf.path, "rb", buffering=0) as fh, load_threads():
        for info in gguf.tensors:
            if stop_event is not None and stop_event.is_set():
                raise LlamaForgeError("loading cancelled")
            if info.name in tensor_names.NON_PARAMETER_TENSORS:
                done += info.nbytes
                continue
            raw = _read_raw(fh, info.offset, info.nbytes)
            if device.type != "cpu":
                raw = raw.to(device)
            exact_in_target = not tensor_names.needs_fp32_transform(spec.name, info.name)
            value = quants.dequantize(raw, info.ggml_type, info.shape, dtype if exact_in_target else torch.float32)
            del raw
            hf_name, value = tensor_names.gguf_tensor_to_hf(spec.name, info.name, value, config)
            if hf_name is None:
                continue
            value = value.to(dtype=dtype).contiguous()
            _set_parameter(model, hf_name, value)
            del value
            done += info.nbytes
            if progress is not None:
                progress(done, total)
    if progress is not None:
        progress(total, total)
    _finish(model, gguf, config, device)


def _finish(model: Any, gguf: GgufFile, config: Any, device: torch.device) -> None:
    """Tie the head, apply Llama 3 rope factors, and make sure no parameter was left on the meta device."""
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    factors = archmod.rope_freq_factors(gguf)
    if factors is not None:
        _apply_rope_freqs(model, factors, device)
    missing = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if missing:
        raise GgufError(f"{gguf.path}: no tensor for {len(missing)} model parameter(s), e.g. {', '.join(missing[:3])}")


def _move_buffers(model: Any, device: torch.device) -> None:
    for module in model.modules():
        for name, buf in list(module._buffers.items()):
            if buf is not None and buf.device != device:
                module._buffers[name] = buf.to(device)


def model_from_gguf(gguf: GgufFile, weights: str, dtype: torch.dtype, device: torch.device,
                    progress: Progress | None = None, stop_event: threading.Event | None = None, *,
                    cache: bool = False) -> Any:
    """The transformers model for ``gguf``. ``cache``: reuse (or fill) the dequantized-model cache
    (``dequant_cache.py``); only for ``weights="gguf"``."""
    spec = check_gguf_loadable(gguf, weights)
    config = archmod.config_from_gguf(gguf, spec)
    model = build_skeleton(config, dtype)
    if weights == "gguf-quantized":
        from llamaforge_tui.core.model.qlora import fill_quantized_model

        def hf_name_for(name: str) -> str | None:
            return None if name in tensor_names.NON_PARAMETER_TENSORS else tensor_names.gguf_to_hf_name(spec.name, name)

        def transform(hf_name: str, tensor: Any) -> Any:
            gguf_name = tensor_names.hf_to_gguf_name(spec.name, hf_name) or hf_name
            return tensor_names.gguf_tensor_to_hf(spec.name, gguf_name, tensor, config)[1]

        _move_buffers(model, device)
        fill_quantized_model(model, gguf, hf_name_for, transform, dtype=dtype, device=device)
        factors = archmod.rope_freq_factors(gguf)
        if factors is not None:
            _apply_rope_freqs(model, factors, device)
    else:
        from llamaforge_tui.core.model import dequant_cache

        _move_buffers(model, device)
        key = dequant_cache.cache_key(gguf.path, dtype) if cache else None
        if key is not None and dequant_cache.load_into(model, key, device):
            _finish(model, gguf, config, device)
            log.info("loaded %s from the dequantized-model cache (%s)", gguf.path, key)
        else:
            load_gguf_weights(model, gguf, spec, config, dtype=dtype, device=device, progress=progress,
                              stop_event=stop_event)
            if key is not None:
                dequant_cache.save(model, key, {"gguf_path": str(gguf.path), "dtype": str(dtype).removeprefix("torch."),
                                                "architecture": spec.name})
    model.eval()
    return model


def gguf_weights_bytes(gguf: GgufFile, dtype: torch.dtype, weights: str = "gguf") -> int:
    """Bytes the loaded weights will take: the GGUF's own size when kept quantized, else elements x dtype size."""
    import torch

    if weights == "gguf-quantized":
        return gguf.tensor_data_bytes
    size = torch.empty(0, dtype=dtype).element_size()
    return sum(t.n_elements for t in gguf.tensors if t.name not in tensor_names.NON_PARAMETER_TENSORS) * size
