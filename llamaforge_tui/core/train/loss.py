"""Memory-lean causal-LM loss: the output head runs only where a label is, a chunk of rows at a time.

A model's usual ``forward(labels=...)`` builds ``batch x seq x vocab`` logits (in fp32 for the loss). With
Gemma's 262k vocabulary that is 1 GB per 1k tokens, and the head is ~60% of Gemma 3 270M's matmul FLOPs,
yet prompt tokens (masked with -100) need none of it. Here the decoder's hidden states are gathered at
the labelled positions only, and :class:`HeadCrossEntropy` computes the loss *and* the gradient with
respect to those hidden states chunk by chunk in its forward pass, so no logits tensor outlives its chunk
and nothing is recomputed in backward. The head's weight is frozen under LoRA, so its gradient is
never needed; if it is trainable we fall back to a checkpointed chunk loop, which is still lean.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

IGNORE_INDEX = -100
# Rows per chunk are chosen so that one chunk of fp32 logits stays near this size. GPUs get bigger chunks:
# they have the memory, and many small chunks leave them launch-bound. CPU: each chunk reads the whole head
# (335 MB for Gemma's 262k x 640), so very small chunks are bandwidth-bound. Measured on the 2-core EPYC
# (512 labelled rows, bf16, loss + gradient, buffers reused across chunks): 256 rows 1.11-1.19 s, 128 rows
# 1.14-1.18 s, 64 rows 1.34-1.36 s; 128 rows (128 MiB of fp32 logits) keeps the speed at half the memory.
CHUNK_BYTES = 128 * 1024 * 1024
CHUNK_BYTES_GPU = 512 * 1024 * 1024
HEAD_KERNELS = ("auto", "compiled", "eager")


def _rows_per_chunk(vocab: int, device_type: str = "cpu") -> int:
    budget = CHUNK_BYTES if device_type == "cpu" else CHUNK_BYTES_GPU
    return max(16, budget // (4 * max(vocab, 1)))


# A chunk may grow by this share of its nominal rows so that a short tail becomes part of the chunks before it:
# every chunk streams the whole head weight twice (forward and gradient), which on the CPU costs about as much
# as 25 rows of arithmetic (2-core EPYC, Gemma's 262k x 640 head: 40 ms + 1.55 ms per row), so 137 rows in one
# chunk take 250 ms where 128 + 9 took 290.
CHUNK_SLACK = 0.25


def _chunk_limit(chunk: int) -> int:
    return max(1, int(chunk * (1 + CHUNK_SLACK)))


def chunk_bounds(n_rows: int, chunk: int) -> list[tuple[int, int]]:
    """(start, stop) of the chunks that ``n_rows`` rows are cut into: as few as allow at most
    ``chunk * (1 + CHUNK_SLACK)`` rows each, of sizes that differ by at most one row, in order."""
    if n_rows <= 0:
        return []
    limit = _chunk_limit(chunk)
    n_chunks = -(-n_rows // limit)
    base, extra = divmod(n_rows, n_chunks)
    bounds, start = [], 0
    for i in range(n_chunks):
        stop = start + base + (1 if i < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def max_chunk_rows(vocab: int, device_type: str = "cpu") -> int:
    """The most rows one chunk of the head loss may hold (the memory plan sizes the logits buffer by it)."""
    return _chunk_limit(_rows_per_chunk(vocab, device_type))


def _workspace_buffer(workspace: dict | None, shape: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
    """A [rows, vocab] buffer of ``like``'s dtype and device, kept in ``workspace`` between calls (a run's
    loss module owns it): a fresh 64 MiB tensor per call costs ~16k page faults on a CPU (20-30 ms per pass,
    measured on the 2-core EPYC), and the buffer is alive at the step's memory peak anyway."""
    import torch

    if workspace is None:
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    key = ("logits", like.dtype, like.device, shape[1])
    buf = workspace.get(key)
    if buf is None or buf.shape[0] < shape[0]:
        workspace.pop(key, None)  # the smaller one goes before the bigger one is made
        buf = torch.empty(shape, dtype=like.dtype, device=like.device)
        workspace[key] = buf
    return buf


def _chunk_logits(h: torch.Tensor, weight: torch.Tensor, softcap: float | None) -> tuple[torch.Tensor, Any]:
    import torch

    logits = h @ weight.t()
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # fp32 at least, fp64 stays
    if softcap:
        t = torch.tanh(logits / softcap)
        return t * softcap, t
    return logits, None


def chunk_loss_and_grad(logits: torch.Tensor, targets: torch.Tensor,
                        softcap: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of CE over the rows, d(sum)/d(logits) in ``logits``' dtype) for one chunk of raw head outputs.

    Written as plain tensor expressions so ``torch.compile`` fuses it into two passes over the chunk (one
    reduction, one pointwise) instead of a dozen fp32 passes; :func:`_chunk_eager` is the same maths
    with in-place ops for when compiling is off or fails.
    """
    import torch

    x = logits.to(torch.promote_types(logits.dtype, torch.float32))
    t = None
    if softcap:
        t = torch.tanh(x / softcap)
        x = t * softcap
    lse = torch.logsumexp(x, -1)
    picked = x.gather(1, targets[:, None]).squeeze(1)
    p = torch.exp(x - lse[:, None])
    cols = torch.arange(x.shape[1], device=x.device)
    p = torch.where(cols[None, :] == targets[:, None], p - 1.0, p)
    if t is not None:
        p = p * (1.0 - t * t)
    return (lse - picked).sum(), p.to(logits.dtype)


LOG2E = 1.4426950408889634


def _exp_shifted_(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``exp(x - m)`` in place, as ``exp2((x - m) * log2(e))``: torch's CPU ``exp2`` is about 3x its ``exp`` (2-core
    EPYC, fp32, 128 x 16,384: sub + exp 0.91 ms, sub + mul + exp2 0.40 ms). The scaled argument's rounding
    gives a relative error that grows with the distance below the row's maximum: about 2e-6 at exp(-40), where
    a term no longer moves the sum; near the maximum, where the terms count, as exact as ``exp``."""
    return x.sub_(m).mul_(LOG2E).exp2_()


def _chunk_eager(logits: torch.Tensor, targets: torch.Tensor, softcap: float | None,
                 work: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`chunk_loss_and_grad` in place, with no fresh chunk-sized tensor (one with a softcap).

    ``logits`` is consumed: the gradient is written back into it. ``work`` (same shape, fp32) holds the wide
    copy when ``logits`` is narrower; without it one is allocated. On a CPU each fresh 256 MiB tensor costs
    more in page faults than the arithmetic (measured on the 2-core EPYC, 256 x 262,144: a bf16 -> fp32
    conversion into a new tensor 89 ms, into a reused buffer 13 ms). The softmax is spelled out (max, exp, sum,
    divide, all in place) rather than ``torch.softmax``: a softmax kernel's own row sum over 262k fp32 terms
    was off by ~3e-5 relative, enough to move a 10-step fp32 run's trajectory; torch's sum reduction is not.
    """
    import torch

    wide = torch.promote_types(logits.dtype, torch.float32)
    if logits.dtype == wide:
        x = logits
    elif work is not None:
        x = work.copy_(logits)
    else:
        x = logits.to(wide)
    t = None
    if softcap:
        t = x.div_(softcap).tanh_()
        x = t * softcap
    rows = torch.arange(targets.shape[0], device=targets.device)
    picked = x[rows, targets]
    m = x.amax(1, keepdim=True)
    _exp_shifted_(x, m)
    total = x.sum(1, keepdim=True)  # torch's reduction: accurate over a 262k row (a softmax kernel's sum is not)
    lse = (m + total.log()).squeeze(1)
    x.div_(total)
    x[rows, targets] -= 1.0
    if t is not None:
        x.mul_(t.mul_(t).neg_().add_(1.0))
    grad = x if x.dtype == logits.dtype else logits.copy_(x)
    return (lse - picked).sum(), grad


# Vocabulary columns per fp32 tile in :func:`_chunk_tiled`: 128 rows x 16,384 x 4 bytes = 8 MiB.
# Measured (2-core EPYC, 128 x 262,144 bf16): 2,048 columns 61 ms, 4,096 55 ms, 16,384 46 ms, 32,768 48 ms; the
# one-pass kernel with a full fp32 buffer 44-47 ms.
TILE_COLS = 16384


def _chunk_tiled(logits: torch.Tensor, targets: torch.Tensor, softcap: float | None,
                 tile: int = TILE_COLS) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`chunk_loss_and_grad` for narrow (bf16/fp16) logits without a chunk-sized fp32 copy.

    Two passes over the vocabulary a tile of columns at a time, each tile widened to fp32 in a small reused
    buffer: the first keeps a running row max and sum of exponentials (the log-sum-exp), the second writes
    the gradient ``softmax - onehot`` back into ``logits`` in place. The fp32 work is the same as
    :func:`_chunk_eager`'s (the sum is still torch's reduction, per tile, then added in fp32) but in tiles
    that stay in cache, and the chunk's 128 MiB fp32 buffer (Gemma's 262k vocabulary, 128 rows) is gone.
    """
    import torch

    rows, vocab = logits.shape
    wide = torch.promote_types(logits.dtype, torch.float32)
    buf = torch.empty((rows, min(tile, vocab)), dtype=wide, device=logits.device)
    idx = torch.arange(rows, device=logits.device)
    picked = torch.empty(rows, dtype=wide, device=logits.device)
    m = torch.full((rows, 1), float("-inf"), dtype=wide, device=logits.device)
    total = torch.zeros((rows, 1), dtype=wide, device=logits.device)

    def widen(start: int) -> torch.Tensor:
        stop = min(start + tile, vocab)
        x = buf[:, :stop - start].copy_(logits[:, start:stop])
        if softcap:
            x.div_(softcap).tanh_().mul_(softcap)
        return x

    for start in range(0, vocab, tile):
        x = widen(start)
        hit = (targets >= start) & (targets < start + x.shape[1])
        if bool(hit.any()):
            picked[hit] = x[idx[hit], targets[hit] - start]
        new_m = torch.maximum(m, x.amax(1, keepdim=True))
        total.mul_((m - new_m).exp_()).add_(_exp_shifted_(x, new_m).sum(1, keepdim=True))
        m = new_m
    lse = m + total.log()
    for start in range(0, vocab, tile):
        x = widen(start)
        if softcap:  # d(c * tanh(z / c))/dz = 1 - tanh^2, with tanh = x / c
            deriv = (x / softcap).square_().neg_().add_(1.0)
        p = _exp_shifted_(x, m).div_(total)  # eager's arithmetic: one tile gives its numbers bit for bit
        hit = (targets >= start) & (targets < start + x.shape[1])
        if bool(hit.any()):
            p[idx[hit], targets[hit] - start] -= 1.0
        if softcap:
            p.mul_(deriv)
        logits[:, start:start + x.shape[1]].copy_(p)
    return (lse.squeeze(1) - picked).sum(), logits


_KERNELS: dict[str, Any] = {}


def _chunk_kernel(kind: str, device_type: str, vocab: int) -> Any:
    """The compiled chunk kernel (built once per process), or the eager one."""
    if kind == "auto":
        kind = "compiled" if default_head_compiled(device_type, vocab) else "eager"
    if kind != "compiled" or _KERNELS.get("failed"):
        return _chunk_eager
    if "compiled" not in _KERNELS:
        from llamaforge_tui.core.train.compile import compile_fn

        _KERNELS["compiled"] = compile_fn(chunk_loss_and_grad, dynamic=True)
    return _KERNELS["compiled"]


def default_head_compiled(device_type: str, vocab: int) -> bool:
    """What ``head_kernel = "auto"`` picks: eager everywhere, by measurement (2-core EPYC, Gemma's 262k head,
    512 labelled rows, bf16, forward + gradient, ABBA pairs in one process): the in-place eager kernel takes
    1.41-1.44 s where the former out-of-place one took 2.29-2.31 s, and the compiled kernel 1.17-2.97 s against
    eager's 1.46-3.11 s, about 1.1-1.25x, which does not pay for its compile (8 s with a warm inductor cache,
    70-117 s cold) nor its risk; end to end on the loaded machine the compiled run was even slower. Kept as
    an option (``--head-kernel compiled``), for big vocabularies only when asked."""
    return False


def _run_chunk(kind: str, logits: torch.Tensor, targets: torch.Tensor, softcap: float | None,
               work: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    fn = _chunk_kernel(kind, logits.device.type, logits.shape[-1])
    if fn is _chunk_eager:
        if work is None and logits.dtype != torch.promote_types(logits.dtype, torch.float32):
            return _chunk_tiled(logits, targets, softcap)
        return fn(logits, targets, softcap, work)
    try:
        return fn(logits, targets, softcap or 0.0)
    except Exception as exc:  # noqa: BLE001 - a compiler failure must never end a run: fall back, say so once
        import logging

        logging.getLogger(__name__).warning("compiled head loss failed (%s: %s); using the eager kernel",
                                            type(exc).__name__, exc)
        _KERNELS["failed"] = True
        return _chunk_eager(logits, targets, softcap, work)


def _head_cross_entropy_class() -> Any:
    import torch

    class HeadCrossEntropy(torch.autograd.Function):
        """sum of CE(h @ W^T, targets) over rows; grad wrt h computed in forward, chunk by chunk."""

        @staticmethod
        def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                    softcap: float | None, chunk: int, kind: str = "eager", workspace: dict | None = None
                    ) -> torch.Tensor:
            need_grad = ctx.needs_input_grad[0]
            total = torch.zeros((), dtype=torch.promote_types(hidden.dtype, torch.float32), device=hidden.device)
            grad_hidden = torch.empty_like(hidden) if need_grad else None
            # One logits buffer for every chunk (and, with a workspace, every call): the matmul writes into it,
            # the gradient comes back through it (fresh chunk-sized tensors cost page faults on every chunk).
            # Narrow logits are widened to fp32 a tile at a time (_chunk_tiled), so no chunk-sized fp32 buffer.
            bounds = chunk_bounds(hidden.shape[0], chunk)
            n_rows, vocab = max(stop - start for start, stop in bounds), weight.shape[0]
            logits_buf = _workspace_buffer(workspace, (n_rows, vocab), hidden)
            work = None
            for start, stop in bounds:
                h = hidden[start:stop]
                k = h.shape[0]
                tgt = targets[start:stop]
                logits = torch.mm(h, weight.t(), out=logits_buf[:k])
                part, grad_logits = _run_chunk(kind, logits, tgt, softcap, None if work is None else work[:k])
                total += part
                if grad_hidden is not None:
                    if grad_logits.dtype != weight.dtype:  # narrow it into the logits buffer, free by now
                        grad_logits = logits_buf[:k].copy_(grad_logits)
                    torch.mm(grad_logits, weight, out=grad_hidden[start:start + k])
            if grad_hidden is not None:
                ctx.save_for_backward(grad_hidden)
            return total

        @staticmethod
        def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
            (grad_hidden,) = ctx.saved_tensors
            return grad_hidden * grad_out.to(grad_hidden.dtype), None, None, None, None, None, None

    return HeadCrossEntropy


_FN_CACHE: dict[str, Any] = {}


def head_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                       softcap: float | None = None, chunk: int | None = None, kernel: str = "eager",
                       workspace: dict | None = None) -> torch.Tensor:
    """Sum (not mean) of token cross-entropies of ``hidden @ weight.T`` against ``targets``, in fp32.

    ``hidden``: (N, H) rows that all carry a label; ``weight``: (V, H) output head; ``targets``: (N,).
    The matmul runs in ``hidden``'s dtype (bf16 under autocast), the softmax and the loss in fp32.
    ``kernel`` (one of :data:`HEAD_KERNELS`) picks the per-chunk softmax: fused by ``torch.compile`` or eager.
    ``workspace``: a dict that keeps the logits buffer from one call to the next (one per training run).
    """
    import torch

    if hidden.shape[0] == 0:
        return hidden.sum().float() * 0.0
    chunk = chunk or _rows_per_chunk(weight.shape[0], hidden.device.type)
    compute = hidden.dtype
    if torch.is_autocast_enabled(hidden.device.type):
        compute = torch.get_autocast_dtype(hidden.device.type)
    w = weight if weight.dtype == compute else weight.to(compute)
    h = hidden.to(compute)
    if weight.requires_grad:  # the head is trained: keep autograd, checkpoint each chunk instead
        from torch.utils.checkpoint import checkpoint

        def piece(hh: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
            logits, _ = _chunk_logits(hh, w, softcap)
            return torch.nn.functional.cross_entropy(logits, tt, reduction="sum")

        parts = [checkpoint(piece, h[s:s + chunk], targets[s:s + chunk], use_reentrant=False)
                 for s in range(0, h.shape[0], chunk)]
        return torch.stack(parts).sum()
    if "fn" not in _FN_CACHE:
        _FN_CACHE["fn"] = _head_cross_entropy_class()
    with torch.autocast(hidden.device.type, enabled=False):
        return _FN_CACHE["fn"].apply(h, w.detach(), targets, softcap, chunk, kernel, workspace)


def causal_lm_loss_sum(model: Any, input_ids: torch.Tensor, position_ids: torch.Tensor,
                       targets: torch.Tensor, head_kernel: str = "eager",
                       workspace: dict | None = None) -> torch.Tensor:
    """Summed CE of a Hugging Face causal LM on already-shifted ``targets`` (-100 = no loss there).

    Runs the decoder (``model.<base_model_prefix>``) without an attention mask: rows are packed or
    right-padded with ``position_ids`` that restart at 0 for every sequence, which transformers turns into
    a block-diagonal causal mask, so packed examples never attend to each other.
    """
    decoder = getattr(model, model.base_model_prefix)
    out = decoder(input_ids=input_ids, position_ids=position_ids, use_cache=False)
    hidden = out.last_hidden_state
    flat_targets = targets.reshape(-1)
    keep = (flat_targets != IGNORE_INDEX).nonzero(as_tuple=True)[0]
    rows = hidden.reshape(-1, hidden.shape[-1]).index_select(0, keep)
    head = model.get_output_embeddings()
    config = getattr(model, "config", None)
    softcap = getattr(config, "final_logit_softcapping", None) if config is not None else None
    if getattr(head, "weight", None) is None and hasattr(head, "cross_entropy_sum"):
        # a head kept in GGUF blocks (weights="gguf-quantized", core.quantized): it walks the vocab in chunks
        return head.cross_entropy_sum(rows, flat_targets.index_select(0, keep), softcap=softcap)
    return head_cross_entropy(rows, head.weight, flat_targets.index_select(0, keep), softcap=softcap,
                              kernel=head_kernel, workspace=workspace)


def loss_module(model: Any, head_kernel: str = "eager") -> Any:
    """A ``torch.nn.Module`` whose ``forward`` returns the summed loss, so DDP can wrap the whole step."""
    import torch

    class CausalLMLoss(torch.nn.Module):
        def __init__(self, lm: Any) -> None:
            super().__init__()
            self.lm = lm
            self.workspace: dict = {}  # the head's logits buffer, kept between steps (freed with the module)

        def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor,
                    targets: torch.Tensor) -> torch.Tensor:
            return causal_lm_loss_sum(self.lm, input_ids, position_ids, targets, head_kernel, self.workspace)

    return CausalLMLoss(model)
