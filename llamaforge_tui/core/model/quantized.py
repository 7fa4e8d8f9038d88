"""Frozen layers that keep GGUF blocks as raw bytes and dequantize on the fly (QLoRA-style training on GGUF).

A 7B Q4_K_M model is 4.4 GB as GGUF but 28 GB in fp32. These modules hold each weight as the GGUF's own bytes
(``qweight``: uint8, one row of blocks per output row) and dequantize only what a forward or backward pass needs,
dropping it right after: the base stays frozen, so backward needs the *input* gradient only (``grad_x = grad_y @ W``)
and never a weight gradient or a saved dequantized weight.

``QuantLinear`` and ``QuantEmbedding`` subclass ``nn.Linear``/``nn.Embedding`` (with ``weight = None``) so that peft's
standard LoRA layers wrap them unchanged and the saved adapter is an ordinary peft adapter; peft finds ``qweight``
(like GPTQ's) to place the adapter on the right device and leaves the adapter dtype alone because it is not float.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from gguf import GGMLQuantizationType

from llamaforge_tui.core.gguf import quants
from llamaforge_tui.core.errors import GgufError

if TYPE_CHECKING:
    import torch
    from torch import nn

# Dequantize at most this many weight values at once in a linear layer (16 MiB of fp32): small layers go in one
# piece, a 262k x 640 output head goes in ~40 pieces.
DEFAULT_CHUNK_ELEMENTS = 1 << 22


def _chunk_rows(out_features: int, in_features: int, chunk_elements: int) -> int:
    return max(1, min(out_features, chunk_elements // max(1, in_features)))


def quant_matmul(
    x: torch.Tensor,
    qweight: torch.Tensor,
    qtype: GGMLQuantizationType,
    in_features: int,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """``x @ W.T`` for a quantized ``W`` (out, in), without a weight gradient; differentiable in ``x``."""
    return _quant_matmul_fn().apply(x, qweight, qtype, in_features, chunk_elements)


@functools.cache
def _quant_matmul_fn() -> Any:
    """The autograd.Function classes are built on first use (and once), so importing this module stays torch-free."""
    import torch

    class QuantMatmulFunction(torch.autograd.Function):
        """Dequantize-on-the-fly matmul. Saves only the (already resident) raw bytes for backward."""

        @staticmethod
        def forward(ctx: Any, x: torch.Tensor, qweight: torch.Tensor, qtype: Any, in_features: int, chunk: int) -> Any:
            ctx.save_for_backward(qweight)
            ctx.qtype, ctx.in_features, ctx.chunk = qtype, in_features, chunk
            # Under autocast, dequantize straight into the autocast dtype (one cast fewer per weight).
            compute = x.dtype
            if torch.is_autocast_enabled(x.device.type):
                compute = torch.get_autocast_dtype(x.device.type)
            out_features = qweight.shape[0]
            step = _chunk_rows(out_features, in_features, chunk)
            with torch.autocast(x.device.type, enabled=False):
                x = x.to(compute)
                if step >= out_features:
                    return x @ quants.dequantize_rows(qweight, qtype, in_features, compute).t()
                y = x.new_empty((*x.shape[:-1], out_features))
                for start in range(0, out_features, step):
                    w = quants.dequantize_rows(qweight[start : start + step], qtype, in_features, compute)
                    y[..., start : start + w.shape[0]] = x @ w.t()
                return y

        @staticmethod
        def backward(ctx: Any, grad_y: torch.Tensor) -> Any:
            if not ctx.needs_input_grad[0]:
                return None, None, None, None, None
            (qweight,) = ctx.saved_tensors
            out_features = qweight.shape[0]
            step = _chunk_rows(out_features, ctx.in_features, ctx.chunk)
            grad_x = None
            for start in range(0, out_features, step):
                w = quants.dequantize_rows(qweight[start : start + step], ctx.qtype, ctx.in_features, grad_y.dtype)
                part = grad_y[..., start : start + w.shape[0]] @ w
                grad_x = part if grad_x is None else grad_x.add_(part)
            return grad_x, None, None, None, None

    return QuantMatmulFunction




# One chunk of fp32 logits in the quantized head loss stays near this size.
HEAD_CHUNK_BYTES = 64 * 1024 * 1024


@functools.cache
def _head_cross_entropy_fn() -> Any:
    import torch

    def chunk_logits(h: torch.Tensor, w: torch.Tensor, softcap: float | None) -> tuple[torch.Tensor, Any]:
        logits = (h @ w.t()).float()
        if softcap:
            t = torch.tanh(logits / softcap)
            return t * softcap, t
        return logits, None

    class QuantHeadCrossEntropy(torch.autograd.Function):
        """Summed CE of ``hidden @ W.T`` for a quantized head, walking the *vocabulary* in chunks, in one pass.

        Each chunk of head rows is dequantized once per call (not once per chunk of tokens), and no
        (tokens x vocab) logits tensor ever exists. The softmax is accumulated online, flash-attention style:
        a running max ``m`` and sum ``s`` per row, and ``acc = sum_j exp(z_j - m) W_j`` rescaled whenever ``m``
        grows, so ``grad_h = acc / s - W_target`` (times the soft-cap's derivative) needs no second pass and
        no more matmuls than the dense loss. Like the trainer's dense ``HeadCrossEntropy``, the gradient wrt
        ``hidden`` is computed in forward (the head is frozen).
        """

        @staticmethod
        def forward(ctx: Any, hidden: torch.Tensor, qweight: torch.Tensor, qtype: Any, targets: torch.Tensor,
                    softcap: float | None, chunk_elements: int) -> torch.Tensor:
            n, width = hidden.shape
            vocab = qweight.shape[0]
            need_grad = ctx.needs_input_grad[0]
            step = max(1, min(vocab, HEAD_CHUNK_BYTES // (4 * max(n, 1)), chunk_elements // max(width, 1)))
            run_max = torch.full((n,), float("-inf"), device=hidden.device)
            run_sum = torch.zeros(n, device=hidden.device)
            target_logit = torch.zeros(n, device=hidden.device)
            acc = torch.zeros(n, width, device=hidden.device) if need_grad else None
            rows = torch.arange(n, device=hidden.device)
            for start in range(0, vocab, step):
                w = quants.dequantize_rows(qweight[start : start + step], qtype, width, hidden.dtype)
                logits, tanh = chunk_logits(hidden, w, softcap)
                new_max = torch.maximum(run_max, logits.max(dim=1).values)
                rescale = torch.exp(run_max - new_max)  # 0 on the first chunk (run_max = -inf)
                weights = torch.exp(logits - new_max[:, None])
                run_sum = run_sum * rescale + weights.sum(dim=1)
                run_max = new_max
                inside = (targets >= start) & (targets < start + w.shape[0])
                local = (targets - start).clamp(0, w.shape[0] - 1)
                target_logit = torch.where(inside, logits[rows, local], target_logit)
                if acc is not None:
                    if tanh is not None:
                        weights.mul_(1.0 - tanh * tanh)
                    acc.mul_(rescale[:, None]).add_((weights.to(w.dtype) @ w).float())
            total = (run_max + torch.log(run_sum) - target_logit).sum()
            if acc is not None:
                w_target = quants.dequantize_rows(qweight[targets], qtype, width, torch.float32)
                slope = torch.ones_like(target_logit) if not softcap else 1.0 - (target_logit / softcap) ** 2
                grad = acc.div_(run_sum[:, None]).sub_(w_target * slope[:, None])
                ctx.save_for_backward(grad.to(hidden.dtype))
            return total

        @staticmethod
        def backward(ctx: Any, grad_out: torch.Tensor) -> Any:
            (grad,) = ctx.saved_tensors
            return grad * grad_out.to(grad.dtype), None, None, None, None, None

    return QuantHeadCrossEntropy


def quant_head_cross_entropy(
    hidden: torch.Tensor,
    qweight: torch.Tensor,
    qtype: GGMLQuantizationType,
    targets: torch.Tensor,
    *,
    softcap: float | None = None,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """Sum of token cross-entropies of ``hidden @ W.T`` (``W`` quantized) against ``targets``, in fp32.

    Same contract as ``core.loss.head_cross_entropy`` (rows that all carry a label); the matmuls run in
    ``hidden``'s dtype, or the autocast dtype when autocast is on.
    """
    import torch

    if hidden.shape[0] == 0:
        return hidden.sum().float() * 0.0
    compute = hidden.dtype
    if torch.is_autocast_enabled(hidden.device.type):
        compute = torch.get_autocast_dtype(hidden.device.type)
    with torch.autocast(hidden.device.type, enabled=False):
        return _head_cross_entropy_fn().apply(hidden.to(compute), qweight, qtype, targets, softcap, chunk_elements)


@functools.cache
def _module_classes() -> tuple[type, type]:
    """Define the nn.Module subclasses lazily (torch is imported only inside functions in core/)."""
    import torch
    from torch import nn

    class QuantLinear(nn.Linear):
        """A frozen linear layer whose weight stays in GGUF blocks (``qweight``: uint8 (out_features, row_bytes))."""

        def __init__(
            self,
            qweight: torch.Tensor,
            qtype: GGMLQuantizationType | int | str,
            in_features: int,
            bias: torch.Tensor | None = None,
            chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
        ) -> None:
            nn.Module.__init__(self)
            self.qtype = quants.quant_type(qtype)
            expected = quants.row_nbytes(self.qtype, in_features)
            if qweight.dim() != 2 or qweight.dtype != torch.uint8 or qweight.shape[1] != expected:
                raise GgufError(
                    f"{self.qtype.name} weight for {in_features} inputs must be uint8 (rows, {expected}), "
                    f"got {qweight.dtype} {tuple(qweight.shape)}"
                )
            self.in_features = int(in_features)
            self.out_features = int(qweight.shape[0])
            self.chunk_elements = int(chunk_elements)
            self.register_parameter("weight", None)
            self.register_buffer("qweight", qweight, persistent=False)
            if bias is not None:
                self.bias = nn.Parameter(bias, requires_grad=False)
            else:
                self.register_parameter("bias", None)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = _quant_matmul_fn().apply(x, self.qweight, self.qtype, self.in_features, self.chunk_elements)
            return y if self.bias is None else y + self.bias.to(y.dtype)

        def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
            """The full weight (for tests, merging and export); allocates out_features x in_features."""
            return quants.dequantize_rows(self.qweight, self.qtype, self.in_features, dtype)

        def cross_entropy_sum(
            self, hidden: torch.Tensor, targets: torch.Tensor, *, softcap: float | None = None
        ) -> torch.Tensor:
            """The trainer's head loss for this (output-head) layer: see ``quant_head_cross_entropy``."""
            if self.bias is not None:
                raise GgufError("a quantized output head with a bias is not supported by the chunked loss")
            return quant_head_cross_entropy(
                hidden, self.qweight, self.qtype, targets, softcap=softcap, chunk_elements=self.chunk_elements
            )

        def extra_repr(self) -> str:
            return f"in_features={self.in_features}, out_features={self.out_features}, qtype={self.qtype.name}"

    class QuantEmbedding(nn.Embedding):
        """A frozen embedding whose table stays in GGUF blocks; a lookup dequantizes only the gathered rows.

        ``embed_scale`` reproduces scaled embeddings (Gemma multiplies by sqrt(hidden) inside the module).
        """

        def __init__(
            self,
            qweight: torch.Tensor,
            qtype: GGMLQuantizationType | int | str,
            embedding_dim: int,
            padding_idx: int | None = None,
            compute_dtype: torch.dtype = torch.float32,
            embed_scale: float | torch.Tensor | None = None,
        ) -> None:
            nn.Module.__init__(self)
            self.qtype = quants.quant_type(qtype)
            expected = quants.row_nbytes(self.qtype, embedding_dim)
            if qweight.dim() != 2 or qweight.dtype != torch.uint8 or qweight.shape[1] != expected:
                raise GgufError(
                    f"{self.qtype.name} embedding of width {embedding_dim} must be uint8 (rows, {expected}), "
                    f"got {qweight.dtype} {tuple(qweight.shape)}"
                )
            self.num_embeddings = int(qweight.shape[0])
            self.embedding_dim = int(embedding_dim)
            self.padding_idx = padding_idx
            self.max_norm, self.norm_type, self.scale_grad_by_freq, self.sparse = None, 2.0, False, False
            self.compute_dtype = compute_dtype
            self.register_parameter("weight", None)
            self.register_buffer("qweight", qweight, persistent=False)
            if embed_scale is None:
                self.embed_scale = None
            else:
                scale = torch.as_tensor(embed_scale, dtype=torch.float32, device=qweight.device)
                self.register_buffer("embed_scale", scale, persistent=False)

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            flat = input_ids.reshape(-1)
            rows = quants.dequantize_rows(self.qweight[flat], self.qtype, self.embedding_dim, self.compute_dtype)
            out = rows.reshape(*input_ids.shape, self.embedding_dim)
            if self.embed_scale is not None:
                out = out * self.embed_scale.to(out.dtype)
            return out

        def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
            return quants.dequantize_rows(self.qweight, self.qtype, self.embedding_dim, dtype)

        def extra_repr(self) -> str:
            return f"{self.num_embeddings}, {self.embedding_dim}, qtype={self.qtype.name}"

    for cls in (QuantLinear, QuantEmbedding):
        cls.__qualname__ = cls.__name__
    return QuantLinear, QuantEmbedding


def __getattr__(name: str) -> Any:
    """``QuantLinear``/``QuantEmbedding`` are real classes, created on first access (PEP 562) so that importing
    this module stays free of torch; ``from llamaforge_tui.core.model.quantized import QuantLinear`` works as usual."""
    if name == "QuantLinear":
        return _module_classes()[0]
    if name == "QuantEmbedding":
        return _module_classes()[1]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_quantized_module(module: Any) -> bool:
    return isinstance(module, _module_classes())


def permute_rows(qweight: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Reorder whole rows of raw blocks: exact, because GGUF blocks never cross a row (llama's q/k un-permute)."""
    import torch

    return qweight.index_select(0, perm.to(device=qweight.device, dtype=torch.long))


def base_weight_bytes(model: nn.Module) -> int:
    """Bytes of the base model's weights held in memory: quantized buffers plus parameters, shared storage once.

    LoRA parameters (peft's ``lora_*``) are not counted; this is what the ``<= 1.15x the GGUF`` promise is about,
    and it measures a dense model the same way (for the side-by-side benchmark).
    """
    seen: set[tuple[Any, int]] = set()
    total = 0

    def add(t: Any) -> None:
        nonlocal total
        if t.device.type == "meta":
            return
        key = (t.device, t.untyped_storage().data_ptr())
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()

    for module in model.modules():
        if is_quantized_module(module):
            add(module.qweight)
    for name, p in model.named_parameters():
        if "lora_" not in name:
            add(p)
    return total


def logical_parameter_count(model: nn.Module) -> int:
    """Parameter count as if every quantized weight were a normal parameter (for descriptions and the UI)."""
    seen: set[int] = set()
    total = 0
    for module in model.modules():
        if is_quantized_module(module) and id(module.qweight) not in seen:
            seen.add(id(module.qweight))
            rows, _ = module.qweight.shape
            width = module.in_features if hasattr(module, "in_features") else module.embedding_dim
            total += rows * width
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total
