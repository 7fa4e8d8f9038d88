"""Load a model source into a trainable transformers causal LM, plus its tokenizer and a description.

The GGUF path does not go through transformers' ``from_pretrained(gguf_file=...)``: that parses the file with
``gguf.GGUFReader``, dequantizes every tensor in numpy to fp32, keeps them all in a dict, then copies them into a
randomly initialised model. Ours streams tensor by tensor into a meta-device skeleton (``gguf_loader.py``) while the
tokenizer is built from the GGUF metadata in parallel (``gguf_tokenizer.py``): about 10x faster, and peak memory is
the final model plus one tensor.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamaforge_tui.core.gguf import arch as archmod
from llamaforge_tui.core.errors import GgufError, LlamaForgeError, SourceError
from llamaforge_tui.core.gguf.file import GgufFile, file_type_name
from llamaforge_tui.core.model.gguf_loader import (  # re-exported: the loader's building blocks
    Progress,
    build_skeleton,
    check_gguf_loadable,
    gguf_weights_bytes,
    load_gguf_weights,
    load_threads,
    model_from_gguf,
    params_on_meta,
)
from llamaforge_tui.core.model.sources import (
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

__all__ = [
    "LoadedModel", "TokenizerBundle", "load_model", "load_tokenizer", "pick_device", "pick_dtype", "dtype_name",
    "parameter_count", "hf_weights_bytes", "Progress", "build_skeleton", "check_gguf_loadable", "gguf_weights_bytes",
    "load_gguf_weights", "load_threads", "model_from_gguf", "params_on_meta",
]

log = logging.getLogger(__name__)

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
        from llamaforge_tui.core.gguf.tokenizer import load_gguf_tokenizer

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


def hf_weights_bytes(model_dir: Path, dtype: torch.dtype) -> int | None:
    """Bytes an HF folder's weights will take in ``dtype``, from the safetensors headers (no data read)."""
    import json
    import struct

    import torch

    sizes = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
    target = torch.empty(0, dtype=dtype).element_size()
    total = 0
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        return None
    try:
        for f in files:
            with open(f, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(n))
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                count = 1
                for d in info["shape"]:
                    count *= d
                total += count * (target if info["dtype"] in ("F32", "F16", "BF16", "F64") else sizes.get(info["dtype"], 4))
    except (OSError, ValueError, KeyError, struct.error):
        return None
    return total


def _model_from_hf(model_dir: Path, dtype: torch.dtype, device: torch.device) -> Any:
    from transformers import AutoModelForCausalLM

    if not any(model_dir.glob("*.safetensors")):
        raise SourceError(f"{model_dir} has no .safetensors weights (pickled .bin weights are never loaded)")
    arch = _hf_arch(model_dir)
    if arch not in archmod.SUPPORTED_ARCHITECTURES:
        raise SourceError(
            f"architecture {arch!r} is not supported yet (supported: {', '.join(sorted(archmod.SUPPORTED_ARCHITECTURES))})"
        )
    placement: dict[str, Any] = {}
    if device.type != "cpu":
        try:  # straight onto the device, shard by shard, instead of through host RAM
            import accelerate  # noqa: F401

            placement["device_map"] = {"": str(device)}
        except ImportError:
            pass
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(model_dir), dtype=dtype, trust_remote_code=False, use_safetensors=True, **placement
        )
    except (OSError, ValueError) as exc:
        raise SourceError(f"cannot load the model in {model_dir}: {exc}") from exc
    model.to(device)
    model.eval()
    return model


def parameter_count(model: Any) -> int:
    """Unique parameters (tied embeddings counted once), logical sizes for quantized modules."""
    try:
        from llamaforge_tui.core.model.quantized import logical_parameter_count

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
               stop_event: threading.Event | None = None, check_memory: bool = True,
               cache: bool = False) -> LoadedModel:
    """Load ``source`` into a transformers causal LM with its tokenizer and a description.

    ``weights``: ``gguf`` (dequantize the GGUF, default), ``hf`` (the mapped HF base), ``gguf-quantized`` (keep GGUF
    blocks in memory, see ``qlora.py``). Unsupported architectures or quant types fail before any tensor is read.
    ``cache``: keep the dequantized weights on disk (``dequant_cache.py``) and reuse them next time (exact).
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
                from llamaforge_tui.core.model.memory import check_model_fits

                check_model_fits(gguf_weights_bytes(gguf, dt, resolved.weights), dev)
            # transformers' lazy imports are not thread-safe: resolve what both threads need here, first.
            from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast  # noqa: F401

            # The tokenizer build is mostly Python and the weight load mostly torch (which releases the GIL):
            # doing both at once hides most of the tokenizer's time.
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lf-tokenizer") as pool:
                pending = pool.submit(load_tokenizer, resolved, settings, resolved.weights)
                model = model_from_gguf(gguf, resolved.weights, dt, dev, progress, stop_event, cache=cache)
                tokenizer = pending.result()
            file_type = file_type_name(gguf.get("general.file_type"))
    else:
        assert resolved.model_dir is not None
        if check_memory:
            needed = hf_weights_bytes(resolved.model_dir, dt)
            if needed is not None:
                from llamaforge_tui.core.model.memory import check_model_fits

                check_model_fits(needed, dev)
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
