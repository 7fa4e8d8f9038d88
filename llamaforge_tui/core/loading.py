"""Load a model source into a trainable transformers causal LM, plus its tokenizer and a description.

The GGUF path does not go through transformers' ``from_pretrained(gguf_file=...)``: that parses the file with
``gguf.GGUFReader``, dequantizes every tensor in numpy to fp32, keeps them all in a dict, then copies them into a
randomly initialised model. Here the model is built with its parameters on the ``meta`` device (buffers such as
rotary frequencies stay real), and each GGUF tensor is read, dequantized in torch (on the target device, straight
to the target dtype), un-transformed (see ``arch.py``) and set as the parameter, one at a time. Peak memory is the
final model plus one tensor, and the time is dominated by reading the file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamaforge_tui.core import arch as archmod
from llamaforge_tui.core.errors import GgufError, LlamaForgeError, SourceError
from llamaforge_tui.core.gguf_file import GgufFile, file_type_name
from llamaforge_tui.core.sources import (
    ResolvedSource,
    SourceDescription,
    SourceSpec,
    blob_digest,
    check_weights,
    parse_source,
    resolve_source,
)

if TYPE_CHECKING:
    import threading

    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

    from llamaforge_tui.core.settings import Settings

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (bytes done, bytes total)


@dataclass
class TokenizerBundle:
    tokenizer: PreTrainedTokenizerFast
    chat_template: str | None
    template_origin: str  # "gguf" | "hf" | "none"
    architecture: str | None
    ollama_template: str | None = None


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerFast
    chat_template: str | None
    description: SourceDescription
    load_seconds: float = 0.0
    ollama_template: str | None = None


# -- dtype and device -----------------------------------------------------------------------------------------------

_DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "f32": "float32", "float16": "float16", "fp16": "float16",
                "f16": "float16", "half": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16"}


def pick_device(device: str = "auto") -> torch.device:
    """cuda, then mps, then cpu; an explicit choice is checked."""
    import torch

    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise LlamaForgeError(f"invalid device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LlamaForgeError("device cuda was requested but no CUDA GPU is available")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise LlamaForgeError("device mps was requested but MPS is not available")
    return dev


def pick_dtype(dtype: str | torch.dtype = "auto", device: torch.device | None = None) -> torch.dtype:
    """bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU; or the named dtype."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "", "auto"):
        device = device or pick_device("auto")
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "mps":
            try:
                torch.zeros(1, dtype=torch.bfloat16, device=device)
                return torch.bfloat16
            except (RuntimeError, TypeError):
                return torch.float16
        return torch.float32
    name = _DTYPE_NAMES.get(str(dtype).lower().removeprefix("torch."))
    if name is None:
        raise LlamaForgeError(f"unknown dtype {dtype!r} (choose auto, float32, bfloat16 or float16)")
    return getattr(torch, name)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# -- tokenizer ------------------------------------------------------------------------------------------------------


def load_tokenizer(source: str | SourceSpec | ResolvedSource, settings: Settings | None = None,
                   weights: str = "gguf") -> TokenizerBundle:
    """The tokenizer that matches the weights: built from the GGUF metadata for GGUF weights, the HF one otherwise."""
    resolved = source if isinstance(source, ResolvedSource) else resolve_source(source, settings, weights)
    if resolved.uses_gguf and resolved.gguf_path is not None:
        from llamaforge_tui.core.gguf_tokenizer import load_gguf_tokenizer

        with GgufFile(resolved.gguf_path) as gguf:
            tokenizer = load_gguf_tokenizer(gguf)
            architecture = _arch_name(gguf)
        template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
        return TokenizerBundle(tokenizer, template, "gguf" if template else "none", architecture,
                               resolved.ollama_template)
    if resolved.model_dir is None:
        raise SourceError(f"{resolved.spec.text}: nothing to load a tokenizer from")
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(resolved.model_dir), trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise SourceError(f"cannot load the tokenizer of {resolved.model_dir}: {exc}") from exc
    template = tokenizer.chat_template if isinstance(getattr(tokenizer, "chat_template", None), str) else None
    return TokenizerBundle(tokenizer, template, "hf" if template else "none", _hf_arch(resolved.model_dir),
                           resolved.ollama_template)


def _arch_name(gguf: GgufFile) -> str | None:
    try:
        return archmod.detect_architecture(gguf).name
    except GgufError:
        return gguf.architecture


def _hf_arch(model_dir: Path) -> str | None:
    import json

    try:
        model_type = json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError):
        return None
    spec = archmod.ARCH_SPECS.get(model_type) or next(
        (s for s in archmod.ARCH_SPECS.values() if s.model_type == model_type), None
    )
    return spec.name if spec else model_type


# -- the GGUF path --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def params_on_meta() -> Iterator[None]:
    """Build modules with parameters on the meta device but real buffers (rotary frequencies, Gemma's embedding
    scale): parameters are replaced by GGUF tensors anyway, buffers are computed from the config."""
    import torch
    from torch import nn

    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
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
    from llamaforge_tui.core import quants

    spec = archmod.detect_architecture(gguf)
    unknown = [
        t.name for t in gguf.tensors
        if t.name not in archmod.NON_PARAMETER_TENSORS and archmod.gguf_to_hf_name(spec.name, t.name) is None
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

    from llamaforge_tui.core import quants

    total = sum(t.nbytes for t in gguf.tensors)
    done = 0
    with open(gguf.path, "rb", buffering=0) as fh, load_threads():
        for info in gguf.tensors:
            if stop_event is not None and stop_event.is_set():
                raise LlamaForgeError("loading cancelled")
            if info.name in archmod.NON_PARAMETER_TENSORS:
                done += info.nbytes
                continue
            raw = _read_raw(fh, info.offset, info.nbytes)
            if device.type != "cpu":
                raw = raw.to(device)
            exact_in_target = not archmod.needs_fp32_transform(spec.name, info.name)
            value = quants.dequantize(raw, info.ggml_type, info.shape, dtype if exact_in_target else torch.float32)
            del raw
            hf_name, value = archmod.gguf_tensor_to_hf(spec.name, info.name, value, config)
            if hf_name is None:
                continue
            value = value.to(dtype=dtype).contiguous()
            _set_parameter(model, hf_name, value)
            del value
            done += info.nbytes
            if progress is not None:
                progress(done, total)
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


def _model_from_gguf(gguf: GgufFile, weights: str, dtype: torch.dtype, device: torch.device,
                     progress: Progress | None, stop_event: threading.Event | None) -> Any:
    spec = check_gguf_loadable(gguf, weights)
    config = archmod.config_from_gguf(gguf, spec)
    model = build_skeleton(config, dtype)
    if weights == "gguf-quantized":
        from llamaforge_tui.core.qlora import fill_quantized_model

        def hf_name_for(name: str) -> str | None:
            return None if name in archmod.NON_PARAMETER_TENSORS else archmod.gguf_to_hf_name(spec.name, name)

        def transform(hf_name: str, tensor: Any) -> Any:
            gguf_name = archmod.hf_to_gguf_name(spec.name, hf_name) or hf_name
            return archmod.gguf_tensor_to_hf(spec.name, gguf_name, tensor, config)[1]

        _move_buffers(model, device)
        fill_quantized_model(model, gguf, hf_name_for, transform, dtype=dtype, device=device)
        factors = archmod.rope_freq_factors(gguf)
        if factors is not None:
            _apply_rope_freqs(model, factors, device)
    else:
        _move_buffers(model, device)
        load_gguf_weights(model, gguf, spec, config, dtype=dtype, device=device, progress=progress,
                          stop_event=stop_event)
    model.eval()
    return model


def _model_from_hf(model_dir: Path, dtype: torch.dtype, device: torch.device) -> Any:
    from transformers import AutoModelForCausalLM

    if not any(model_dir.glob("*.safetensors")):
        raise SourceError(f"{model_dir} has no .safetensors weights (pickled .bin weights are never loaded)")
    arch = _hf_arch(model_dir)
    if arch not in archmod.SUPPORTED_ARCHITECTURES:
        raise SourceError(
            f"architecture {arch!r} is not supported yet (supported: {', '.join(sorted(archmod.SUPPORTED_ARCHITECTURES))})"
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(model_dir), dtype=dtype, trust_remote_code=False, use_safetensors=True
        )
    except (OSError, ValueError) as exc:
        raise SourceError(f"cannot load the model in {model_dir}: {exc}") from exc
    model.to(device)
    model.eval()
    return model


def parameter_count(model: Any) -> int:
    """Unique parameters (tied embeddings counted once), logical sizes for quantized modules."""
    try:
        from llamaforge_tui.core.quantized import logical_parameter_count

        return int(logical_parameter_count(model))
    except (ImportError, AttributeError):
        seen: set[int] = set()
        total = 0
        for p in model.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
        return total


def load_model(source: str | SourceSpec, settings: Settings | None = None, *, weights: str = "gguf",
               dtype: str | torch.dtype = "auto", device: str = "auto", progress: Progress | None = None,
               stop_event: threading.Event | None = None, check_memory: bool = True) -> LoadedModel:
    """Load ``source`` into a transformers causal LM with its tokenizer and a description.

    ``weights``: ``gguf`` (dequantize the GGUF, default), ``hf`` (the mapped HF base), ``gguf-quantized`` (keep GGUF
    blocks in memory, see ``qlora.py``). Unsupported architectures or quant types fail before any tensor is read.
    """
    start = time.perf_counter()
    spec = source if isinstance(source, SourceSpec) else parse_source(source)
    weights = check_weights(weights)
    resolved = resolve_source(spec, settings, weights)
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    file_type = None
    if resolved.uses_gguf:
        assert resolved.gguf_path is not None
        with GgufFile(resolved.gguf_path) as gguf:
            check_gguf_loadable(gguf, resolved.weights)
            if check_memory:
                from llamaforge_tui.core.memory import check_model_fits

                check_model_fits(gguf_weights_bytes(gguf, dt, resolved.weights), dev)
            # transformers' lazy imports are not thread-safe: resolve what both threads need here, first.
            from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast  # noqa: F401

            # The tokenizer build is mostly Python and the weight load mostly torch (which releases the GIL):
            # doing both at once hides most of the tokenizer's time.
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lf-tokenizer") as pool:
                pending = pool.submit(load_tokenizer, resolved, settings, resolved.weights)
                model = _model_from_gguf(gguf, resolved.weights, dt, dev, progress, stop_event)
                tokenizer = pending.result()
            file_type = file_type_name(gguf.get("general.file_type"))
    else:
        assert resolved.model_dir is not None
        tokenizer = load_tokenizer(resolved, settings, "hf")
        model = _model_from_hf(resolved.model_dir, dt, dev)
    description = SourceDescription(
        source=spec.text,
        kind=spec.kind,
        weights=resolved.weights,
        architecture=tokenizer.architecture or (_hf_arch(resolved.model_dir) if resolved.model_dir else None),
        dtype=dtype_name(dt),
        device=str(dev),
        gguf_path=str(resolved.gguf_path) if resolved.gguf_path else None,
        gguf_file_type=file_type,
        hf_repo=resolved.hf_repo,
        hf_revision=resolved.hf_revision,
        model_dir=str(resolved.model_dir) if resolved.model_dir else None,
        ollama_model=resolved.ollama_model.full_name if resolved.ollama_model is not None else None,
        parameter_count=parameter_count(model),
        chat_template=tokenizer.chat_template,
        template_origin=tokenizer.template_origin,
        ollama_template=tokenizer.ollama_template,
        gguf_sha256=blob_digest(resolved.gguf_path),
    )
    return LoadedModel(model, tokenizer.tokenizer, tokenizer.chat_template, description,
                       time.perf_counter() - start, tokenizer.ollama_template)


def gguf_weights_bytes(gguf: GgufFile, dtype: torch.dtype, weights: str = "gguf") -> int:
    """Bytes the loaded weights will take: the GGUF's own size when kept quantized, else elements x dtype size."""
    import torch

    if weights == "gguf-quantized":
        return gguf.tensor_data_bytes
    size = torch.empty(0, dtype=dtype).element_size()
    return sum(t.n_elements for t in gguf.tensors if t.name not in archmod.NON_PARAMETER_TENSORS) * size
