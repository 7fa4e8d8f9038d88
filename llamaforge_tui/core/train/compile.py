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

from llamaforge_tui.core.train import fused

log = logging.getLogger(__name__)

COMPILE_MODES = ("auto", "on", "off")
# Widths are padded up to a multiple of this when layers are compiled. Measured on the 2-core EPYC (Gemma 3
# 270M, batches of 4 chat examples of 30-600 tokens): with 64 the padding ate the gain (steady 247 tok/s
# compiled vs 242 eager); with 16, 286-291 vs 243. Dynamic shapes keep it to one graph either way.
BUCKET = 16
# compile = "auto" on a CPU: the first PROBE_STEPS steps run eager and time the run; the layers are compiled
# when the eager estimate of the rest is at least CPU_PAYBACK_S. A cold compile took ~45 s on the 2-core EPYC
# and compiled steps are ~1.2x faster, so it pays back after ~4.5 minutes of eager training.
PROBE_STEPS = 3
CPU_PAYBACK_S = 300.0


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
    """Whether ``compile = "auto"`` compiles the decoder layers before the first step on this device.

    CUDA: yes; fusion removes most kernel launches of a small model, where it is launch-bound (bench_train
    --gpu times ``ours`` vs ``ours-eager``). CPU: not up front (see :func:`late_compile_note`): a short run
    would spend more on the compile than it wins."""
    return device_type == "cuda"


def late_compile_note(mode: str, device_type: str, steps_done: int, seconds: float, steps_left: int) -> str | None:
    """For ``compile = "auto"`` on a CPU, after :data:`PROBE_STEPS` eager steps: a note for the log when the
    layers should be compiled now (the eager estimate of the rest is at least :data:`CPU_PAYBACK_S`), else None.

    Measured on the 2-core EPYC (Gemma 3 270M Q4_K_M, bf16 autocast, LoRA r16, 32 chat examples, batch 4):
    eager steady 240-250 tok/s, compiled 286-291 tok/s (47% of the machine's bf16 matmul ceiling against 40%),
    for a compile of ~45 s with a cold inductor cache (~15 s warm) and less peak RSS (2,375 MiB against
    2,839 MiB: fused pointwise ops keep fewer intermediates)."""
    if mode != "auto" or device_type != "cpu" or steps_done != PROBE_STEPS or steps_left <= 0:
        return None
    left = seconds / steps_done * steps_left
    if left < CPU_PAYBACK_S:
        return None
    return (f"compile: the eager estimate of the rest is {left / 60:.0f} min, so the decoder layers are compiled "
            f"now (after step {steps_done}; ~1.2x faster steps on a CPU, for a compile of about a minute)")


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


def compile_layers(model: Any, mode: str, device_type: str, *, recompute: bool = False) -> tuple[int, str]:
    """Compile the decoder layers in place when ``mode`` (or, for "auto", the measured default) says so.
    ``recompute``: with :func:`recompute_forms` (norm outputs and ``act(gate) * up`` rebuilt in backward).

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
            fused.set_fused(layer, False)  # the compiler fuses norms and activations itself
            if recompute:
                recompute_forms(layer)
    except Exception as exc:  # noqa: BLE001 - never end a run over an optimisation
        log.warning("compiling the decoder layers failed: %s", exc)
        uncompile_layers(model)
        return 0, f"compile: failed ({type(exc).__name__}); eager layers"
    note = f"compile: {len(layers)} decoder layers (regional, dynamic shapes, widths bucketed to {BUCKET}"
    return len(layers), note + ("; norm and activation outputs recomputed in backward)" if recompute else ")")


def _recompute_mlp_forward(self: Any, x: Any) -> Any:
    from torch.utils.checkpoint import checkpoint

    gate, up = self.gate_proj(x), self.up_proj(x)
    return self.down_proj(checkpoint(lambda g, u: self.act_fn(g) * u, gate, up, use_reentrant=False,
                                     preserve_rng_state=False))


def _recompute_norm_forward(self: Any, x: Any) -> Any:
    from torch.utils.checkpoint import checkpoint

    return checkpoint(lambda t: type(self).forward(self, t), x, use_reentrant=False, preserve_rng_state=False)


def recompute_forms(layer: Any) -> int:
    """In a layer about to be compiled: each norm, and the gated MLP's ``act(gate) * up``, as a checkpointed
    region, which dynamo traces as one and AOT autograd's partitioner then recomputes in backward from the
    region's inputs instead of keeping its outputs. Those inputs are kept anyway (the norm's input for its own
    backward, gate and up for the activation's), so what goes is the outputs that LoRA A's would keep: per
    token and layer one of the MLP's width and two of the hidden size. The recomputation is pointwise work
    fused into the backward kernels. The compiler's counterpart of :mod:`fused`'s recipes, which cannot run
    inside a compiled graph (saved-tensor hooks). Measured (2-core EPYC, Gemma 3 270M, bench_train): peak RSS
    1,608-1,617 MiB against 1,742-1,751, steady tokens/s no lower. Returns the modules changed; undone by
    :func:`uncompile_layers`."""
    import types

    count = 0
    for module in layer.modules():
        name = type(module).__name__
        if name in fused.NORM_CLASSES:
            form = types.MethodType(_recompute_norm_forward, module)
        elif name in fused.MLP_CLASSES and _is_gated_mlp(module):
            form = types.MethodType(_recompute_mlp_forward, module)
        else:
            continue
        module.forward = form
        module._lf_recompute = True
        count += 1
    return count


def _is_gated_mlp(module: Any) -> bool:
    """``down(act(gate(x)) * up(x))``: the parts are there and the class's own forward gives the same output as
    that spelled out (bit for bit, on a random input), so a class that does more is left alone."""
    import torch

    if not all(isinstance(getattr(module, a, None), torch.nn.Module)
               for a in ("gate_proj", "up_proj", "down_proj", "act_fn")):
        return False
    width = getattr(module, "hidden_size", None) or getattr(module.gate_proj, "in_features", None)
    first = next(module.parameters(), None)
    if not isinstance(width, int) or first is None:
        return False

    def spelled_out(x: Any) -> Any:
        return module.down_proj(module.act_fn(module.gate_proj(x)) * module.up_proj(x))

    # A bf16 base under fp32 LoRA runs under autocast only (the trainer stops peft's input casts): check it so
    narrow = min((p.dtype for p in module.parameters()), key=lambda d: torch.finfo(d).bits)
    mixed = any(p.dtype != narrow for p in module.parameters())
    with torch.autocast(first.device.type, dtype=narrow, enabled=mixed):
        return fused.same_forward(lambda x: type(module).forward(module, x), spelled_out, width, narrow,
                                  first.device)


def uncompile_layers(model: Any) -> None:
    """Return compiled layers to eager (used when the first compiled step fails)."""
    for layer in decoder_layers(model):
        layer._compiled_call_impl = None
        for module in layer.modules():
            if module.__dict__.pop("_lf_recompute", None):
                module.__dict__.pop("forward", None)
        fused.set_fused(layer, True)


def is_compile_error(exc: BaseException) -> bool:
    """An exception raised by dynamo or inductor (as opposed to the model's own code)."""
    return any(cls.__module__.startswith(("torch._dynamo", "torch._inductor")) for cls in type(exc).__mro__)
