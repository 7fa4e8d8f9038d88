"""Proof that an exported GGUF computes what the trained PyTorch model computes.

The exported file is loaded in llama.cpp (through ``llama-cpp-python``, the ``verify`` extra) and its
next-token distributions are compared with reference logits (the merged PyTorch model) on the same token
ids: top-1 agreement and mean KL(reference || llama.cpp) over every position. Token ids, not text, go in,
so tokenizer differences cannot blur a weight or layout bug.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llamaforge_tui.core.gguf.writer import ExportError

VERIFY_INSTALL_HINT = 'pip install "llamaforge-tui[verify]"'
MIN_POSITIONS = 64

# (min top-1 agreement, max mean KL) per output class; None KL gate = report and warn only.
GATES: dict[str, tuple[float, float]] = {"float": (0.99, 1e-4), "q8_0": (0.97, 1e-3)}
WARN_KL_4BIT = 0.05
TIE_TOLERANCE = 0.01  # logits; see compare_logits


def gate_class(out_type: str) -> str:
    t = out_type.lower()
    if t in ("f32", "f16", "bf16"):
        return "float"
    if t == "q8_0":
        return "q8_0"
    return "quantized"  # 4/5/6-bit, keep, hybrid, adapter on a quantized source


@dataclass
class VerificationSample:
    prompt: str
    expected: str
    generated: str


@dataclass
class Verification:
    top1_agreement: float
    mean_kl: float
    max_kl: float
    positions: int
    passed: bool
    gate: str
    warnings: list[str] = field(default_factory=list)
    sample: VerificationSample | None = None
    label: str = ""
    floor_kl: float | None = None  # mean KL of the base model in the same type (see export_verify.apply_floor)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def require_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:
        raise ExportError(f"llama-cpp-python is not installed; install it with: {VERIFY_INSTALL_HINT}") from exc
    return llama_cpp


def has_llama_cpp() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def quiet_stderr() -> Any:
    """llama.cpp prints its load log on fd 2; keep the CLI and TUI clean."""
    try:
        fd = os.dup(2)
    except OSError:
        yield
        return
    with open(os.devnull, "wb") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(fd, 2)
            os.close(fd)


class LlamaCppRunner:
    """One llama.cpp context over an exported file (optionally + LoRA adapter), all-position logits."""

    def __init__(self, gguf_path: Path | str, *, lora_path: Path | str | None = None, n_ctx: int = 512,
                 n_threads: int | None = None) -> None:
        llama_cpp = require_llama_cpp()
        kwargs: dict[str, Any] = dict(model_path=str(gguf_path), logits_all=True, n_ctx=n_ctx, n_batch=n_ctx,
                                      verbose=False, n_gpu_layers=0, seed=0)
        if lora_path is not None:
            kwargs["lora_path"] = str(lora_path)
        if n_threads:
            kwargs["n_threads"] = n_threads
        try:
            with quiet_stderr():
                self.llm = llama_cpp.Llama(**kwargs)
        except (ValueError, RuntimeError) as exc:
            raise ExportError(f"llama.cpp could not load {gguf_path}: {exc}") from exc
        self.n_ctx = n_ctx

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        if len(ids) > self.n_ctx:
            raise ExportError(f"sequence of {len(ids)} tokens is longer than the context {self.n_ctx}")
        self.llm.reset()
        self.llm.eval(list(ids))
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)

    def greedy(self, prompt_ids: Sequence[int], max_new_tokens: int, stop_ids: set[int]) -> list[int]:
        self.llm.reset()
        self.llm.eval(list(prompt_ids))
        out: list[int] = []
        for _ in range(max_new_tokens):
            if self.llm.n_tokens >= self.n_ctx:
                break
            nxt = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
            if nxt in stop_ids:
                break
            out.append(nxt)
            self.llm.eval([nxt])
        return out

    def close(self) -> None:
        close = getattr(self.llm, "close", None)
        if close is not None:
            close()


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


@dataclass(frozen=True)
class LogitComparison:
    top1_agreement: float
    mean_kl: float
    max_kl: float
    positions: int
    max_abs_diff: float


def compare_logits(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> LogitComparison:
    """Top-1 agreement (up to reference ties within ``TIE_TOLERANCE``) and KL(reference || candidate) over every
    position of every sequence."""
    kls: list[np.ndarray] = []
    agree = 0
    total = 0
    max_abs = 0.0
    for ref, cand in zip(reference, candidate):
        n = min(len(ref), len(cand))
        vocab = min(ref.shape[-1], cand.shape[-1])  # HF may pad the embedding past the real vocabulary
        r, c = ref[:n, :vocab], cand[:n, :vocab]
        lr, lc = _log_softmax(r), _log_softmax(c)
        kls.append((np.exp(lr) * (lr - lc)).sum(axis=-1))
        # A flip between two tokens the reference itself scores within TIE_TOLERANCE is a tie, not a disagreement:
        # half-precision noise (~0.02) decides such positions either way.
        c_top = c.argmax(-1)
        r_at_c = np.take_along_axis(r, c_top[:, None], axis=-1)[:, 0]
        agree += int((r.max(-1) - r_at_c <= TIE_TOLERANCE).sum())
        total += n
        max_abs = max(max_abs, float(np.abs(r.astype(np.float64) - c).max())) if n else max_abs
    kl = np.concatenate(kls) if kls else np.zeros(0)
    return LogitComparison(agree / total if total else 0.0, float(kl.mean()) if total else float("nan"),
                           float(kl.max()) if total else float("nan"), total, max_abs)


def judge(cmp: LogitComparison, out_type: str, *, label: str = "") -> Verification:
    """Apply the gates of the output type's class; 4-bit-ish outputs only warn."""
    gate = gate_class(out_type)
    warnings: list[str] = []
    passed = True
    if cmp.positions < MIN_POSITIONS:
        warnings.append(f"only {cmp.positions} positions compared (wanted >= {MIN_POSITIONS})")
    if gate in GATES:
        min_top1, max_kl = GATES[gate]
        if cmp.top1_agreement < min_top1 or not cmp.mean_kl <= max_kl:
            passed = False
            warnings.append(f"{out_type}: top-1 {cmp.top1_agreement:.1%} (gate {min_top1:.0%}), mean KL "
                            f"{cmp.mean_kl:.2e} (gate {max_kl:.0e})")
    elif not cmp.mean_kl <= WARN_KL_4BIT:
        warnings.append(f"{out_type}: mean KL {cmp.mean_kl:.3g} is above {WARN_KL_4BIT}; the quantization wipes "
                        "out much of the fine-tune. Prefer the adapter or the hybrid output")
    return Verification(cmp.top1_agreement, cmp.mean_kl, cmp.max_kl, cmp.positions, passed, gate, warnings,
                        label=label)


def llama_cpp_logits(gguf_path: Path | str, sequences: Sequence[Sequence[int]], *,
                     lora_path: Path | str | None = None) -> list[np.ndarray]:
    n_ctx = max(64, max(len(s) for s in sequences) + 8)
    runner = LlamaCppRunner(gguf_path, lora_path=lora_path, n_ctx=n_ctx)
    try:
        return [runner.logits(s) for s in sequences]
    finally:
        runner.close()


def torch_logits(model: Any, sequences: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """Reference logits from a (merged) PyTorch causal LM, float32, one sequence at a time."""
    import torch

    out = []
    device = next(model.parameters()).device
    with torch.no_grad():
        for s in sequences:
            ids = torch.tensor([list(s)], dtype=torch.long, device=device)
            out.append(model(input_ids=ids).logits[0].float().cpu().numpy())
    return out
