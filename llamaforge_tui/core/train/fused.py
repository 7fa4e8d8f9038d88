"""Fused RMSNorm and gated-MLP activations for training: the same forward, less kept for backward.

A model's RMSNorm computes in fp32 and autograd keeps the fp32 copy of its input (and more) for backward;
the gated MLP keeps the gate, the activation's output and the up projection. Under LoRA the norms' weights and
the projections are frozen, so backward needs much less: the norm's input in its own dtype and one fp32 scale
per row, and the MLP's gate and up. These functions keep only that and recompute the rest in backward.

Measured on Gemma 3 270M (bf16 autocast, a 1,120-token micro-batch): autograd kept 961 MiB, of which the
norms' fp32 copies were 296 MiB and the activation's output 79 MiB.

Their outputs need not be kept either: under LoRA the MLP's norm output is gate's and up's LoRA A input and
``act(gate) * up`` the down projection's, and each LoRA A keeps its input for its weight's gradient. Inside
:func:`recompute_kept_outputs` (the trainer's forward pass of eager layers) a saved-tensor hook over each fused
MLP sees that a tensor being saved is (a view of) one of these outputs and keeps the recipe instead, from
tensors the fused functions keep anyway; backward rebuilds it once, with the forward's own arithmetic, so the
gradients are the same bit for bit (``tests/core/train/test_fused.py``). On Gemma 3 270M that is one
[tokens x 640] and one [tokens x 2048] bf16 tensor less per layer: peak RSS 1,620-1,656 MiB against 1,728-1,752
without, at the same speed (README "Training speed"). The hook covers the MLP only: over the whole model (the
attention's q/k/v inputs too) every saved tensor passes through Python, which cost 5-8% of a step for about
30 MiB more.

Layers that ``torch.compile`` compiles get their original forms back (:func:`set_fused`): the compiler fuses
them itself, and better; there the same outputs are recomputed by marking them for the compiler's partitioner
(``core.train.compile.recompute_forms``). Both are the ``recompute`` option (:func:`recompute_enabled`).

Safety: a module is patched only if its class is one of the known forms AND, on a random input, the fused
forward equals the module's own forward bit for bit (in fp32 and bf16). Anything else stays as it was. The
backward formulas are checked against autograd in ``tests/core/train/test_fused.py``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)

FUSED_MODES = ("auto", "on", "off")
RECOMPUTE_MODES = ("auto", "on", "off")

# norm class name -> how the weight applies: "one_plus" (Gemma: (x_hat * (1 + w)) in fp32, then cast) or
# "scale_after_cast" (Llama and its kin: w * x_hat.to(input dtype))
NORM_CLASSES = {
    "Gemma3RMSNorm": "one_plus", "GemmaRMSNorm": "one_plus", "Gemma2RMSNorm": "one_plus",
    "LlamaRMSNorm": "scale_after_cast", "Qwen2RMSNorm": "scale_after_cast", "Qwen3RMSNorm": "scale_after_cast",
    "MistralRMSNorm": "scale_after_cast", "Phi3RMSNorm": "scale_after_cast",
}
MLP_CLASSES = ("Gemma3MLP", "GemmaMLP", "Gemma2MLP", "LlamaMLP", "Qwen2MLP", "Qwen3MLP", "MistralMLP")


def _eps(module: Any) -> float | None:
    for name in ("eps", "variance_epsilon"):
        value = getattr(module, name, None)
        if isinstance(value, float):
            return value
    return None


def _norm_function() -> Any:
    import torch

    class FusedRMSNorm(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float, form: str) -> torch.Tensor:
            rstd = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)
            out = _norm_out(x, weight, rstd, form)
            ctx.save_for_backward(x, weight, rstd)
            ctx.form = form
            _offer(out, _norm_out, (x, weight, rstd, form))
            return out

        @staticmethod
        def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
            x, weight, rstd = ctx.saved_tensors
            x_hat = x.float() * rstd
            if ctx.form == "one_plus":
                g = grad_out.float() * (1.0 + weight.float())
            else:
                g = (grad_out * weight).float()
            grad_x = None
            if ctx.needs_input_grad[0]:
                dot = (g * x_hat).mean(-1, keepdim=True)
                grad_x = ((g - x_hat * dot) * rstd).to(x.dtype)
            grad_w = None
            if ctx.needs_input_grad[1]:
                if ctx.form == "one_plus":
                    grad_w = (grad_out.float() * x_hat).reshape(-1, x.shape[-1]).sum(0).to(weight.dtype)
                else:
                    grad_w = (grad_out * x_hat.to(x.dtype)).float().reshape(-1, x.shape[-1]).sum(0).to(weight.dtype)
            return grad_x, grad_w, None, None

    return FusedRMSNorm


def _act_mul_function() -> Any:
    import torch

    class FusedActMul(torch.autograd.Function):
        """act(gate) * up, keeping only gate and up for backward."""

        @staticmethod
        def forward(ctx: Any, gate: torch.Tensor, up: torch.Tensor, kind: str) -> torch.Tensor:
            ctx.save_for_backward(gate, up)
            ctx.kind = kind
            out = _act_mul(gate, up, kind)
            _offer(out, _act_mul, (gate, up, kind))
            return out

        @staticmethod
        def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
            gate, up = ctx.saved_tensors
            grad_gate = grad_up = None
            if ctx.needs_input_grad[1]:
                grad_up = grad_out * _act(gate, ctx.kind)
            if ctx.needs_input_grad[0]:
                through = grad_out * up
                if ctx.kind == "silu":
                    grad_gate = torch.ops.aten.silu_backward(through, gate)
                else:
                    grad_gate = torch.ops.aten.gelu_backward(through, gate, approximate=ctx.kind.split(":")[1])
            return grad_gate, grad_up, None

    return FusedActMul


def _norm_out(x: Any, weight: Any, rstd: Any, form: str) -> Any:
    """The norm's output from its input and per-row scale: the forward's arithmetic, and its recomputation."""
    xf = x.float()
    if form == "one_plus":
        return (xf * rstd * (1.0 + weight.float())).type_as(x)
    return weight * (xf * rstd).to(x.dtype)


def _act_mul(gate: Any, up: Any, kind: str) -> Any:
    return _act(gate, kind) * up


# -- outputs recomputed instead of kept --------------------------------------------------------------
_local = threading.local()  # .outputs: storage address -> (weakref to the output, its version, its _Output)


def _offer(out: Any, recipe: Callable[..., Any], inputs: tuple[Any, ...]) -> None:
    """Note ``out`` as recomputable from ``inputs`` (tensors the fused function keeps anyway), inside
    :func:`recompute_kept_outputs` only."""
    outputs = getattr(_local, "outputs", None)
    if outputs is None or not out.is_contiguous() or out.storage_offset() != 0:
        return
    outputs[out.untyped_storage().data_ptr()] = (weakref.ref(out), out._version, _Output(recipe, inputs))


class _Output:
    """One offered output that autograd saved: rebuilt once in backward, shared by every view saved of it (the
    MLP's norm output is saved by gate's and by up's LoRA A), and dropped when the last of them has been read."""

    __slots__ = ("recipe", "inputs", "pending", "rebuilt")

    def __init__(self, recipe: Callable[..., Any], inputs: tuple[Any, ...]) -> None:
        self.recipe, self.inputs, self.pending, self.rebuilt = recipe, inputs, 0, None


class _Recipe:
    """What a saved tensor became: the output it is a view of, and which view."""

    __slots__ = ("output", "size", "stride", "offset")

    def __init__(self, output: _Output, saved: Any) -> None:
        self.output = output
        self.size, self.stride, self.offset = saved.size(), saved.stride(), saved.storage_offset()
        output.pending += 1

    def rebuild(self) -> Any:
        output = self.output
        if output.rebuilt is None:
            output.rebuilt = output.recipe(*output.inputs)
        view = output.rebuilt.as_strided(self.size, self.stride, self.offset)
        output.pending -= 1
        if output.pending <= 0:
            output.rebuilt = None
        return view


def _pack(saved: Any) -> Any:
    import torch

    outputs = getattr(_local, "outputs", None)
    if not outputs or saved.layout != torch.strided:
        return saved
    try:
        address = saved.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # a tensor without a plain storage
        return saved
    entry = outputs.get(address)
    if entry is None:
        return saved
    ref, version, output = entry
    out = ref()
    if (out is None or out.untyped_storage().data_ptr() != address
            or saved.dtype != out.dtype or saved._version != version or out._version != version):
        return saved  # gone, reused or changed in place since: keep the tensor itself
    return _Recipe(output, saved)


def _unpack(packed: Any) -> Any:
    return packed.rebuild() if isinstance(packed, _Recipe) else packed


@contextlib.contextmanager
def recompute_kept_outputs(enabled: bool = True) -> Iterator[None]:
    """Around a training forward pass: inside each fused MLP, a fused output that autograd would keep (the
    gate/up LoRA A's input, the MLP's norm output; the down projection's LoRA A input, the activation's output)
    is kept as its recipe and recomputed in backward, bit for bit. Nested or disabled: nothing."""
    if not enabled or getattr(_local, "outputs", None) is not None:
        yield
        return
    _local.outputs = {}
    try:
        yield
    finally:
        _local.outputs = None


def _recipes_inside() -> Any:
    """The saved-tensor hooks for one fused MLP's forward, where the outputs it reads are saved. Only there:
    hooks over the whole model cost 5-8% of a step's time (every saved tensor passes through Python), for
    little more memory saved (Gemma 3 270M, CPU)."""
    import torch

    if getattr(_local, "outputs", None) is None:
        return contextlib.nullcontext()
    return torch.autograd.graph.saved_tensors_hooks(_pack, _unpack)


def _act(x: Any, kind: str) -> Any:
    import torch

    if kind == "silu":
        return torch.nn.functional.silu(x)
    return torch.nn.functional.gelu(x, approximate=kind.split(":")[1])


def _act_kind(act: Any) -> str | None:
    """'silu', 'gelu:tanh' or 'gelu:none' for the activation modules transformers uses, else None."""
    import torch

    if isinstance(act, torch.nn.SiLU):
        return "silu"
    name = type(act).__name__
    if name == "SiLUActivation":
        return "silu"
    if name in ("PytorchGELUTanh", "GELUTanh"):
        return "gelu:tanh"
    if isinstance(act, torch.nn.GELU):
        return f"gelu:{act.approximate}"
    inner = getattr(act, "act", None)  # GELUActivation wraps nn.functional.gelu or nn.GELU
    if isinstance(inner, torch.nn.GELU):
        return f"gelu:{inner.approximate}"
    return None


_FUNCTIONS: dict[str, Any] = {}


def _fn(name: str) -> Any:
    if name not in _FUNCTIONS:
        _FUNCTIONS[name] = _norm_function() if name == "norm" else _act_mul_function()
    return _FUNCTIONS[name]


def _fused_norm_forward(self: Any, x: Any) -> Any:
    return _fn("norm").apply(x, self.weight, self._lf_eps, self._lf_form)


def _fused_mlp_forward(self: Any, x: Any) -> Any:
    with _recipes_inside():
        return self.down_proj(_fn("act_mul").apply(self.gate_proj(x), self.up_proj(x), self._lf_kind))


def _bind(module: Any, function: Any, **settings: Any) -> Any:
    """``function`` bound to ``module`` (a bound method, so a deep copy of the model rebinds it to the copy)."""
    import types

    for key, value in settings.items():
        setattr(module, f"_lf_{key}", value)
    return types.MethodType(function, module)


def set_fused(root: Any, on: bool) -> int:
    """Switch the fused forms under ``root`` off (the class's own forward again) or back on. Compiled layers
    take the original forms: the compiler fuses them itself, and measured better so (Gemma 3 270M, CPU:
    compiled with the fused forms 2,240 MiB peak and 3% slower steps, against 2,191 MiB without)."""
    count = 0
    for module in root.modules():
        fused = module.__dict__.get("_lf_fused")
        if fused is None:
            continue
        if on:
            module.forward = module.__dict__.get("_lf_lora", fused)  # core.train.lora_fused's form where set
        else:
            module.__dict__.pop("forward", None)
        count += 1
    return count


def same_forward(original: Any, fused: Any, width: int, dtype: Any, device: Any) -> bool:
    """The fused forward gives exactly the module's own output on a random input (no autograd)."""
    import torch

    torch_gen = torch.Generator().manual_seed(7)
    x = (torch.randn((3, 5, width), generator=torch_gen) * 3).to(device=device, dtype=dtype)
    with torch.no_grad():
        try:
            return bool(torch.equal(original(x), fused(x)))
        except Exception:  # noqa: BLE001 - a form we do not know: leave the module alone
            return False


def default_fused(device_type: str) -> bool:
    """What ``fused = "auto"`` picks: on for the CPU, where it was measured (Gemma 3 270M on the 2-core EPYC:
    see README "Training speed"); off elsewhere until measured there."""
    return device_type == "cpu"


def recompute_enabled(mode: str, device_type: str, gradient_checkpointing: bool = False) -> bool:
    """Whether a run with ``recompute = mode`` rebuilds norm outputs and ``act(gate) * up`` in backward (eager
    layers: :func:`recompute_kept_outputs`; compiled ones: ``core.train.compile.recompute_forms``). auto: on for
    the CPU, where it was measured (Gemma 3 270M, bench_train: eager peak RSS 1,620-1,664 MiB against
    1,728-1,752, compiled 1,608-1,617 against 1,742-1,751, the same speed); elsewhere off until measured there.
    Never under gradient checkpointing, which keeps nothing inside a layer anyway (the trainer, the compiled
    layers and the memory plan all ask here)."""
    if gradient_checkpointing:
        return False
    return mode == "on" or (mode == "auto" and device_type == "cpu")


def enabled(mode: str, device_type: str) -> bool:
    """Whether a run with ``fused = mode`` on ``device_type`` fuses (the trainer and the memory plan ask this)."""
    return mode == "on" or (mode == "auto" and default_fused(device_type))


def fuse_modules(model: Any, mode: str = "auto", device_type: str = "cpu") -> tuple[int, int, str]:
    """Patch the norms and gated MLPs of ``model`` (in place) with the fused forms. Returns (norms, mlps,
    a line for the run's log). ``off`` (or ``auto`` where :func:`default_fused` says no): nothing."""
    import torch

    if not enabled(mode, device_type):
        return 0, 0, f"fused norms/activations: off{' (auto on ' + device_type + ')' if mode == 'auto' else ''}"
    norms = mlps = 0
    refused: set[str] = set()
    for module in model.modules():
        name = type(module).__name__
        weight = getattr(module, "weight", None)
        if name in NORM_CLASSES and isinstance(weight, torch.Tensor) and weight.ndim == 1 and _eps(module) is not None:
            fused = _bind(module, _fused_norm_forward, form=NORM_CLASSES[name], eps=_eps(module))
            dtypes = {torch.float32, weight.dtype}
            if weight.device.type == "cpu":
                dtypes.add(torch.bfloat16)
            if all(same_forward(module.forward, fused, weight.shape[0], d, weight.device) for d in dtypes):
                module.forward = module._lf_fused = fused
                norms += 1
            else:
                refused.add(name)
        elif name in MLP_CLASSES and all(hasattr(module, a) for a in ("gate_proj", "up_proj", "down_proj", "act_fn")):
            kind = _act_kind(module.act_fn)
            first = next(module.parameters(), None)
            width = getattr(module, "hidden_size", None) or getattr(module.gate_proj, "in_features", None)
            fused = _bind(module, _fused_mlp_forward, kind=kind) if kind else None
            if (fused is None or first is None or not isinstance(width, int)
                    or not same_forward(module.forward, fused, width, first.dtype, first.device)):
                refused.add(f"{name} ({type(module.act_fn).__name__})")
                continue
            module.forward = module._lf_fused = fused
            mlps += 1
    note = f"fused norms/activations: {norms} norms, {mlps} MLPs"
    if refused:
        note += f" (left as they were: {', '.join(sorted(refused))})"
    return norms, mlps, note
