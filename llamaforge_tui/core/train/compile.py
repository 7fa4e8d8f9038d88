"""``torch.compile`` for the training loop, regionally: each decoder layer (and the head loss's chunk kernel)
is compiled on its own, never the whole model.

Why regional: the layers of a model share one piece of code, so dynamo compiles it once (twice for models
that alternate sliding and full attention) and every layer reuses it; compile time stays a few tens of
seconds instead of minutes, and a graph break in the model's glue code costs nothing. Shapes: batches
from length grouping have many widths; :func:`bucket_width` rounds them up to a few buckets and layers are
compiled with dynamic shapes, so a run never recompiles without end.

Every entry point degrades: a compiler that is missing or fails leaves the eager module in place, and the
caller is told (the run's log says which lever is on and which fell back).
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

COMPILE_MODES = ("auto", "on", "off")
# Widths are padded up to a multiple of this when layers are compiled (64 is also the SDPA tile size).
BUCKET = 64


def bucket_width(width: int, multiple: int) -> int:
    """``width`` rounded up to a multiple of ``multiple`` (0 or 1: unchanged)."""
    if multiple <= 1:
        return width
    return -(-width // multiple) * multiple


def compile_fn(fn: Any, *, dynamic: bool | None = None) -> Any:
    import torch

    return torch.compile(fn, dynamic=dynamic)


def decoder_layers(model: Any) -> list[Any]:
    """The transformer blocks: the longest ``ModuleList`` whose name ends in ``layers`` (or ``h``/``blocks``)."""
    import torch

    best: list[Any] = []
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(module, torch.nn.ModuleList) and leaf in ("layers", "h", "blocks") and len(module) > len(best):
            best = list(module)
    return best


def default_compile(device_type: str) -> bool:
    """Whether ``compile = "auto"`` compiles the decoder layers on this device.

    Measured on the 2-core EPYC (Gemma 3 270M, bf16 autocast, LoRA r16, 8 x 128 tokens, torch profiler): the
    block matmuls (oneDNN, which inductor calls as they are) and the head are ~75% of a step; the pointwise
    glue inductor could fuse (autocast casts 12%, mul/add/pow/GELU ~9%, attention ~5%) is the rest. Compiling
    the layers took 204 s (cold cache, machine shared and loaded) before the first step, more than a
    short CPU run could win back from a <25% share, so CPU stays eager (``--compile on`` to opt in). On CUDA
    the same fusion removes most kernel launches of a small model, where it is launch-bound; bench_train
    --gpu times both (``ours`` vs ``ours-eager``)."""
    return device_type == "cuda"


def compiler_usable(device_type: str) -> tuple[bool, str]:
    """(usable, why not): inductor needs a C++ compiler on CPU and Triton on CUDA."""
    import shutil

    if device_type == "cpu" and not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
        return False, "no C++ compiler on PATH"
    if device_type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False, "Triton is not installed"
    return True, ""


def compile_layers(model: Any, mode: str, device_type: str) -> tuple[int, str]:
    """Compile the decoder layers in place when ``mode`` (or, for "auto", the measured default) says so.

    Returns (layers compiled, a one-line note for the run's log)."""
    if mode == "off" or (mode == "auto" and not default_compile(device_type)):
        return 0, "compile: off (eager layers)"
    usable, why = compiler_usable(device_type)
    if not usable:
        return 0, f"compile: skipped ({why}); eager layers"
    layers = decoder_layers(model)
    if not layers:
        return 0, "compile: skipped (no decoder layers found); eager layers"
    try:
        for layer in layers:
            layer.compile(dynamic=True)
    except Exception as exc:  # noqa: BLE001 - never end a run over an optimisation
        log.warning("compiling the decoder layers failed: %s", exc)
        for layer in layers:
            layer._compiled_call_impl = None  # back to the eager forward
        return 0, f"compile: failed ({type(exc).__name__}); eager layers"
    return len(layers), f"compile: {len(layers)} decoder layers (regional, dynamic shapes, widths bucketed to {BUCKET})"


def uncompile_layers(model: Any) -> None:
    """Return compiled layers to eager (used when the first compiled step fails)."""
    for layer in decoder_layers(model):
        layer._compiled_call_impl = None


def is_compile_error(exc: BaseException) -> bool:
    """An exception raised by dynamo or inductor (as opposed to the model's own code)."""
    return any(cls.__module__.startswith(("torch._dynamo", "torch._inductor")) for cls in type(exc).__mro__)
