"""Attention for training on a CPU: batched matmuls with grouped query heads folded into rows, in place of
SDPA's CPU flash kernel.

Why: on short training rows the CPU flash kernel is slow. It walks small blocks of queries and keys, and with
grouped-query attention (Gemma 3 270M: 4 query heads on 1 key/value head, head dim 256) it treats every query
head as its own problem. Here the query heads that share a key/value head become rows of ONE matrix:
``[batch * kv_heads, seq * group, head_dim]``. Then the scores are one batched matmul against the keys, the
output one against the values, and backward four more. Those shapes keep oneDNN's bf16 matmuls near their peak.
Measured on the 2-core EPYC (4 query heads on 1 kv head, head dim 256, bf16, forward and backward, each in a
compiled function): 4 x 240 tokens 11.7 ms against the flash kernel's 19.9, 4 x 512 50 against 77, 2 x 512 27
against 39, 1 x 1024 50 against 55. Eager: 14.0 against 18.9 at 4 x 240, 65 against 55 at 1 x 1024.

Numerics:
- Scores are computed in fp32 (the inputs widened before their matmul). A bf16 score matmul is rounded to bf16
  before the softmax, as transformers' own eager attention does. Against an fp64 reference that had 4.4 times
  the flash kernel's error (rms 0.77% against 0.17%); fp32 scores have 0.22%.
- The softmax runs in fp32. The probabilities meet the values in the inputs' dtype, as in the flash kernel.
- Backward keeps the probabilities in the inputs' dtype (bf16 in training), with q, k, v and the output, and
  recomputes nothing. Recomputing them (what flash does: keep one log-sum-exp a row) costs a second fp32 score
  matmul; and inside a compiled graph the partitioner moves a backward matmul that needs only forward values
  into the forward and keeps its fp32 result, twice the bytes of these probabilities (measured at 4 x 320
  tokens: 6.3 MiB a layer kept against 3.1 MiB here and flash's 0 extra). Made un-movable (the scores and dP as
  one batched matmul, which needs dO) it took 19.4 ms at 4 x 240, flash's time, against 11.7 here. So
  activation memory is SDPA's plus ``batch x heads x seq^2`` bf16 numbers a layer, bounded by
  :data:`MAX_KEYS` and :data:`MAX_SCORE_BYTES`.

Where this does not fit, the call goes to transformers' SDPA path unchanged:
- other devices;
- keys longer than :data:`MAX_KEYS` (the kept probabilities grow with the square of the length; flash skips
  the masked half);
- a cache (queries and keys of different lengths);
- attention dropout, logit softcapping, a position bias, a float mask, or returned attention weights;
- non-causal modules.
The mask is the SDPA mask that transformers builds (or none, for plain causal rows), so packing and sliding
windows mean exactly what they mean there.
"""

from __future__ import annotations

from typing import Any

ATTENTION_MODES = ("auto", "matmul", "sdpa")
IMPL_NAME = "llamaforge_matmul"
# The longest keys the folded path takes; beyond it, SDPA's flash kernel. Measured as above: 4 x 512 tokens 50 ms
# against flash's 77, 1 x 1024 50 against 55 compiled and 65 against 55 eager. The cost is the probabilities kept
# for backward (batch x heads x seq^2 bf16 numbers a layer, where flash keeps one number a row): at 1,024 keys
# 8 MiB a layer for one row, 144 MiB over Gemma 3 270M's 18, for 10% of attention's time or none; at 512 keys a
# quarter of that per row, for a third of its time.
MAX_KEYS = 512
# And the largest fp32 score matrix (batch x heads x queries x keys) it builds, one layer at a time.
MAX_SCORE_BYTES = 64 * 1024 * 1024

_FN: dict[str, Any] = {}


def default_matmul(device_type: str, compiled: bool) -> bool:
    """What ``attention = "auto"`` picks: the folded path on a CPU where the decoder layers are compiled, SDPA
    elsewhere. Measured on the 2-core EPYC, Gemma 3 270M, bench_train (32 examples, batch 4): compiled layers
    steady 339 tok/s against 293 with SDPA, peak RSS 1,668 MiB against 1,608; eager layers 272 against 269, no
    gain for 25 MiB more. Not measured on GPUs, where SDPA has real flash kernels."""
    return device_type == "cpu" and compiled


def _allowed(n_q: int, n_k: int, device: Any) -> Any:
    """[n_q, n_k] bool: key j visible to query i (plain causal)."""
    import torch

    return torch.arange(n_k, device=device)[None, :] <= torch.arange(n_q, device=device)[:, None]


def _function() -> Any:
    import torch

    class FoldedAttention(torch.autograd.Function):
        """softmax(q k^T * scale + mask) v over rows that fold each kv head's query heads together.

        q: [B, H, S, D]; k, v: [B, Hk, S, D]; ``allowed``: bool, broadcastable to [B, 1, S, S] (True: attend).
        Returns [B, S, H, D] (the layout transformers' attention functions return)."""

        @staticmethod
        def forward(ctx: Any, q: Any, k: Any, v: Any, allowed: Any, scale: float) -> Any:
            b, h, s, d = q.shape
            hk = k.shape[1]
            g = h // hk
            with torch.autocast(q.device.type, enabled=False):
                q2 = q.reshape(b, hk, g, s, d).transpose(2, 3).reshape(b * hk, s * g, d)  # rows (position, head)
                k2 = k.reshape(b * hk, s, d)
                v2 = v.reshape(b * hk, s, d)
                mask = _row_mask(allowed, b, hk, s, g)
                p = _probabilities(q2, k2, mask, scale, (b, hk, g, s)).to(v2.dtype)
                out2 = torch.bmm(p, v2)
            ctx.save_for_backward(q2, k2, v2, out2, p)
            ctx.scale, ctx.shape = scale, (b, h, hk, g, s, d)
            return out2.view(b, hk, s, g, d).transpose(1, 2).reshape(b, s, h, d)

        @staticmethod
        def backward(ctx: Any, grad_out: Any) -> tuple[Any, ...]:
            q2, k2, v2, out2, p = ctx.saved_tensors
            b, h, hk, g, s, d = ctx.shape
            with torch.autocast(q2.device.type, enabled=False):
                do2 = grad_out.reshape(b, s, hk, g, d).transpose(1, 2).reshape(b * hk, s * g, d).to(v2.dtype)
                dv2 = torch.bmm(p.transpose(1, 2), do2)
                dp = torch.bmm(do2, v2.transpose(1, 2))
                row_dot = (do2.float() * out2.float()).sum(-1, keepdim=True)
                ds = (p.float() * (dp.float() - row_dot) * ctx.scale).to(q2.dtype)
                dq2 = torch.bmm(ds, k2)
                dk2 = torch.bmm(ds.transpose(1, 2), q2)
            dq = dq2.view(b, hk, s, g, d).transpose(2, 3).reshape(b, h, s, d)
            return dq, dk2.view(b, hk, s, d), dv2.view(b, hk, s, d), None, None

    def _row_mask(allowed: Any, b: int, hk: int, s: int, g: int) -> Any:
        """``allowed`` ([S, S] or [B or 1, 1, S, S]) as [B or 1, 1, S, 1, S]: it broadcasts over the scores viewed
        as [B, Hk, S, G, S]."""
        if allowed.dim() == 2:
            return allowed.view(1, 1, s, 1, s)
        return allowed.reshape(allowed.shape[0], 1, s, 1, s)

    def _probabilities(q2: Any, k2: Any, mask: Any, scale: float, shape: tuple[int, ...]) -> Any:
        """Softmax probabilities, fp32 [B * Hk, S * G, S] (a row that sees nothing: 0)."""
        b, hk, g, s = shape
        x = torch.bmm(q2.float(), k2.float().transpose(1, 2)).mul_(scale)
        x.view(b, hk, s, g, s).masked_fill_(~mask, float("-inf"))
        m = x.amax(-1, keepdim=True)
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        x.sub_(m).exp_()
        return x.div_(x.sum(-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny))

    _FN["apply"] = FoldedAttention.apply
    return FoldedAttention


def folded_attention(q: Any, k: Any, v: Any, allowed: Any, scale: float) -> Any:
    """[B, S, H, D] attention output of ``q`` [B, H, S, D] over ``k``, ``v`` [B, Hk, S, D] where ``allowed``
    (bool, [S, S] or [B or 1, 1, S, S]) is True."""
    return _FN["apply"](q, k, v, allowed, scale) if "apply" in _FN else _function().apply(q, k, v, allowed, scale)


def _fits(module: Any, query: Any, key: Any, attention_mask: Any, dropout: float, kwargs: dict) -> bool:
    import torch

    if query.device.type != "cpu" or dropout or kwargs.get("softcap") is not None:
        return False
    if kwargs.get("position_bias") is not None or kwargs.get("output_attentions"):
        return False
    if not getattr(module, "is_causal", True) or kwargs.get("is_causal") is False:
        return False
    n_q, n_k = query.shape[2], key.shape[2]
    if n_q != n_k or n_k > MAX_KEYS or query.shape[1] % key.shape[1]:
        return False
    if query.shape[0] * query.shape[1] * n_q * n_k * 4 > MAX_SCORE_BYTES:
        return False
    if attention_mask is not None and (attention_mask.dtype != torch.bool or attention_mask.shape[-2:] != (n_q, n_k)):
        return False
    return query.dtype in (torch.float32, torch.bfloat16, torch.float16)


def matmul_attention_forward(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                             dropout: float = 0.0, scaling: float | None = None,
                             sliding_window: int | None = None, **kwargs: Any) -> tuple[Any, None]:
    """A transformers attention function (registered as :data:`IMPL_NAME`): the folded path where it fits,
    else transformers' SDPA function with the same arguments."""
    if not _fits(module, query, key, attention_mask, dropout, kwargs):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      sliding_window=sliding_window, **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if attention_mask is None:
        # Plain causal rows: transformers builds no mask only when no key falls outside a sliding window
        # (masking_utils._ignore_causal_mask_sdpa), so the window is not read here. Reading it made compiled
        # layers specialize on it: one more graph, and its compile, for the sliding layers.
        allowed = _allowed(query.shape[2], key.shape[2], query.device)
    else:
        allowed = attention_mask
    return folded_attention(query, key, value.to(query.dtype), allowed, scale), None


def register() -> str:
    """Register :data:`IMPL_NAME` with transformers' attention and mask interfaces (once; the mask is SDPA's)."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if "apply" not in _FN:  # built here, outside any compiled region: building a class there breaks the graph
        _function()
    if IMPL_NAME not in ALL_ATTENTION_FUNCTIONS._global_mapping:
        ALL_ATTENTION_FUNCTIONS.register(IMPL_NAME, matmul_attention_forward)
    if IMPL_NAME not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        ALL_MASK_ATTENTION_FUNCTIONS.register(IMPL_NAME, sdpa_mask)
    return IMPL_NAME


def _configs(model: Any) -> list[Any]:
    seen: dict[int, Any] = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            seen.setdefault(id(config), config)
    return list(seen.values())


def use_matmul_attention(model: Any, mode: str, device_type: str,
                         compiled: bool = False) -> tuple[list[tuple[Any, str]], str]:
    """Switch the model's SDPA attention to the folded path per ``mode`` (one of :data:`ATTENTION_MODES`;
    ``compiled``: whether the decoder layers are compiled, which ``auto`` asks).

    Returns (what to hand :func:`restore_attention` after the run, a note for the run's log). Only configs that
    use SDPA are switched: a model on eager attention (one with logit softcapping, say) keeps it."""
    if mode not in ATTENTION_MODES:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION_MODES)}")
    if mode == "sdpa" or (mode == "auto" and not default_matmul(device_type, compiled)):
        return [], "attention: sdpa"
    if device_type != "cpu":
        return [], "attention: sdpa (the matmul path is for CPUs)"
    changed = []
    for config in _configs(model):
        if config._attn_implementation == "sdpa":
            register()
            changed.append((config, config._attn_implementation))
            config._attn_implementation = IMPL_NAME
    if not changed:
        return [], "attention: the model's own (not SDPA, left alone)"
    return changed, f"attention: matmul (query heads folded per kv head; SDPA beyond {MAX_KEYS} keys)"


def restore_attention(changed: list[tuple[Any, str]]) -> None:
    for config, previous in changed:
        config._attn_implementation = previous
