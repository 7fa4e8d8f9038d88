"""The gated MLP with LoRA on its three projections as one autograd function: wider matmuls, less kept.

Under peft each projection is its own ``Linear`` plus a LoRA pair, and autograd keeps, per token and layer,
the MLP's input, the gate, the up projection and ``act(gate) * up`` (the down projection's input, kept by its
LoRA A), all in the activations' dtype. Here:

- the gate and up projections run as ONE matmul against their weights side by side (``[W_gate; W_up]``, the
  two frozen weights made views of one buffer when the MLP is patched, so no copy and no extra memory), and
  both LoRA A matrices as one skinny matmul;
- backward keeps the input, the gate and the up projection (and the rank-r LoRA intermediates) and
  recomputes ``act(gate) * up`` from them: one [tokens x intermediate] tensor less per layer (on Gemma 3 270M,
  4 KiB per token and layer of ~28);
- the gradient flows back through the gate and up weights as one matmul too.

The maths is peft's own: ``base(x) + scale * B(A(x))`` per projection, the matmuls in the activations' dtype
(bf16 under autocast, as autocast runs peft's), the LoRA weight gradients in their own dtype (fp32). A module is
patched only where every projection is a plain LoRA ``Linear`` (one adapter, no dropout, no DoRA, no bias);
whenever that stops being so at call time (adapters disabled for a base-model comparison, merged, another
adapter active), the MLP takes the unfused path. ``tests/core/train/test_lora_fused.py`` checks the loss and
every gradient against peft's path.
"""

from __future__ import annotations

from typing import Any

from llamaforge_tui.core.train import fused as fused_mod


def _lora_parts(layer: Any) -> tuple[Any, Any, Any, float] | None:
    """(frozen weight, A, B, scale) of a peft LoRA Linear in the plain case, else None."""
    base = getattr(layer, "base_layer", None)
    if base is None or getattr(layer, "merged", False) or getattr(layer, "disable_adapters", False):
        return None
    active = getattr(layer, "active_adapters", None) or []
    if len(active) != 1:
        return None
    name = active[0]
    lora_a, lora_b = getattr(layer, "lora_A", {}), getattr(layer, "lora_B", {})
    if name not in lora_a or name not in lora_b:
        return None
    if dict(getattr(layer, "use_dora", {})).get(name, False):
        return None
    dropouts = getattr(layer, "lora_dropout", {})
    if name in dropouts and type(dropouts[name]).__name__ != "Identity":
        return None
    if getattr(base, "bias", None) is not None or getattr(lora_a[name], "bias", None) is not None:
        return None
    if getattr(lora_b[name], "bias", None) is not None:
        return None
    weight = getattr(base, "weight", None)
    if weight is None or weight.requires_grad or weight.ndim != 2:
        return None
    return weight, lora_a[name].weight, lora_b[name].weight, float(layer.scaling[name])


def _mlp_function() -> Any:
    import torch

    class LoraGatedMLP(torch.autograd.Function):
        """down(act(gate(x)) * up(x)) with LoRA on all three; see the module's docstring."""

        @staticmethod
        def forward(ctx: Any, x: torch.Tensor, w_gu: torch.Tensor, w_down: torch.Tensor, a_g: torch.Tensor,
                    b_g: torch.Tensor, a_u: torch.Tensor, b_u: torch.Tensor, a_d: torch.Tensor, b_d: torch.Tensor,
                    scales: tuple[float, float, float], kind: str) -> torch.Tensor:
            dt = x.dtype
            shape = x.shape
            x2 = x.reshape(-1, shape[-1])
            ff = w_down.shape[1]
            r_g = a_g.shape[0]
            s_g, s_u, s_d = scales
            with torch.autocast(x.device.type, enabled=False):
                gu = x2 @ w_gu.t()  # [T, 2 FF]: gate and up projections in one matmul, LoRA added in place
                xa = x2 @ torch.cat([a_g, a_u]).to(dt).t()  # [T, r_g + r_u]
                gate, up = gu[:, :ff], gu[:, ff:]
                gate.addmm_(xa[:, :r_g], b_g.to(dt).t(), alpha=s_g)
                up.addmm_(xa[:, r_g:], b_u.to(dt).t(), alpha=s_u)
                h = fused_mod._act(gate, kind).mul_(up)
                ha = h @ a_d.to(dt).t()  # [T, r_d]
                out = torch.addmm(h @ w_down.t(), ha, b_d.to(dt).t(), alpha=s_d)
            ctx.save_for_backward(x2, gu, xa, ha, w_gu, w_down, a_g, b_g, a_u, b_u, a_d, b_d)
            ctx.scales, ctx.kind, ctx.shape = scales, kind, shape
            return out.reshape(*shape[:-1], out.shape[-1])

        @staticmethod
        def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
            x2, gu, xa, ha, w_gu, w_down, a_g, b_g, a_u, b_u, a_d, b_d = ctx.saved_tensors
            s_g, s_u, s_d = ctx.scales
            dt = x2.dtype
            ff = w_down.shape[1]
            r_g = a_g.shape[0]
            gate, up = gu[:, :ff], gu[:, ff:]
            with torch.autocast(x2.device.type, enabled=False):
                go = grad_out.reshape(-1, grad_out.shape[-1]).to(dt)
                act = fused_mod._act(gate, ctx.kind)
                h = act * up
                # down projection
                d_ha = (go @ b_d.to(dt)).mul_(s_d)  # [T, r_d]
                grad_b_d = (go.t() @ ha).mul_(s_d).to(b_d.dtype)
                dh = torch.addmm(go @ w_down, d_ha, a_d.to(dt))  # [T, FF]
                grad_a_d = (d_ha.t() @ h).to(a_d.dtype)
                del h
                # act(gate) * up
                d_gu = torch.empty((dh.shape[0], 2 * ff), dtype=dt, device=dh.device)
                torch.mul(dh, act, out=d_gu[:, ff:])
                del act
                through = dh.mul_(up)
                if ctx.kind == "silu":
                    d_gu[:, :ff] = torch.ops.aten.silu_backward(through, gate)
                else:
                    d_gu[:, :ff] = torch.ops.aten.gelu_backward(through, gate, approximate=ctx.kind.split(":")[1])
                del through, dh
                d_gate, d_up = d_gu[:, :ff], d_gu[:, ff:]
                # gate and up projections
                d_xa = torch.cat([(d_gate @ b_g.to(dt)).mul_(s_g), (d_up @ b_u.to(dt)).mul_(s_u)], dim=1)
                grad_b_g = (d_gate.t() @ xa[:, :r_g]).mul_(s_g).to(b_g.dtype)
                grad_b_u = (d_up.t() @ xa[:, r_g:]).mul_(s_u).to(b_u.dtype)
                grad_x = torch.addmm(d_gu @ w_gu, d_xa, torch.cat([a_g, a_u]).to(dt))
                grad_a = d_xa.t() @ x2
                grad_a_g, grad_a_u = grad_a[:r_g].to(a_g.dtype), grad_a[r_g:].to(a_u.dtype)
            grad_x = grad_x.reshape(ctx.shape) if ctx.needs_input_grad[0] else None
            return (grad_x, None, None, grad_a_g, grad_b_g, grad_a_u, grad_b_u, grad_a_d, grad_b_d, None, None)

    return LoraGatedMLP


_FUNCTIONS: dict[str, Any] = {}


def _function() -> Any:
    if "mlp" not in _FUNCTIONS:
        _FUNCTIONS["mlp"] = _mlp_function()
    return _FUNCTIONS["mlp"]


def _joined(first: Any, second: Any) -> Any:
    """``[first; second]`` without a copy when ``second`` directly follows ``first`` in one storage (as
    :func:`join_weights` leaves them), else a fresh concatenation."""
    import torch

    if (first.untyped_storage().data_ptr() == second.untyped_storage().data_ptr() and first.is_contiguous()
            and second.is_contiguous() and first.shape[1:] == second.shape[1:]
            and second.storage_offset() == first.storage_offset() + first.numel()):
        return first.new_empty(0).set_(first.untyped_storage(), first.storage_offset(),
                                       (first.shape[0] + second.shape[0], *first.shape[1:]))
    return torch.cat([first, second])


def _lora_mlp_forward(self: Any, x: Any) -> Any:
    import torch

    parts = [_lora_parts(getattr(self, n)) for n in ("gate_proj", "up_proj", "down_proj")]
    if (any(p is None for p in parts) or not torch.is_grad_enabled() or x.dtype != parts[0][0].dtype
            or x.dtype not in (torch.float32, torch.bfloat16, torch.float16)):
        return self._lf_unfused(x)
    (w_g, a_g, b_g, s_g), (w_u, a_u, b_u, s_u), (w_d, a_d, b_d, s_d) = parts
    return _function().apply(x, _joined(w_g, w_u), w_d, a_g, b_g, a_u, b_u, a_d, b_d, (s_g, s_u, s_d),
                             self._lf_kind)


def join_weights(first: Any, second: Any) -> bool:
    """Make two frozen Linear weights views of one buffer, ``first`` then ``second`` (same memory as before:
    the old tensors are freed). False (nothing changed) where they cannot be joined."""
    import torch

    a, b = first.weight, second.weight
    if a.requires_grad or b.requires_grad or a.dtype != b.dtype or a.device != b.device or a.shape[1:] != b.shape[1:]:
        return False
    with torch.no_grad():
        buf = torch.cat([a.detach(), b.detach()])
        first.weight.data = buf[:a.shape[0]]
        second.weight.data = buf[a.shape[0]:]
    return True


def fuse_lora_mlps(model: Any) -> int:
    """Give every eligible gated MLP under ``model`` (after peft wrapped it) the fused LoRA forward; the number
    patched. An MLP qualifies when :func:`fused.fuse_modules` gave it the fused activation form (its class is a
    known gated form, and that form matched its own forward bit for bit) and its three projections are plain
    LoRA Linears. :func:`fused.set_fused` switches it off and on with the other fused forms."""
    count = 0
    for module in model.modules():
        if type(module).__name__ not in fused_mod.MLP_CLASSES or "_lf_fused" not in module.__dict__:
            continue  # only MLPs whose fused activation form was checked against their own forward
        kind = fused_mod._act_kind(getattr(module, "act_fn", None))
        projections = [getattr(module, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
        if kind is None or any(p is None or _lora_parts(p) is None for p in projections):
            continue
        if not join_weights(projections[0].base_layer, projections[1].base_layer):
            continue
        module._lf_unfused = module._lf_fused  # the fused activation form: where the LoRA form does not apply
        module.forward = module._lf_lora = fused_mod._bind(module, _lora_mlp_forward, kind=kind)
        count += 1
    return count
