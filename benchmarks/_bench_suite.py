"""Pieces of bench_train.py: random-weight model shapes and synthetic token data (no tokenizer, no GGUF, no
network), the matmul ceiling, FLOPs per token, and the side-by-side table.

A synthetic shape replaces two functions of ``core.train.setup`` inside the variant's own process: the model
comes from a config with random weights (seeded, so every variant starts from the same weights) and the data
is a fixed list of tokenized examples whose answers are learnable (a motif repeated), so the last-quarter
loss of two variants can be compared.
"""

from __future__ import annotations

import random
import time
from types import SimpleNamespace
from typing import Any

# Gemma 3 text-model shapes (the rest of the config: transformers' Gemma3TextConfig defaults).
SHAPES: dict[str, dict[str, Any]] = {
    "gemma-270m": {"vocab_size": 262144, "hidden_size": 640, "intermediate_size": 2048, "num_hidden_layers": 18,
                   "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256, "sliding_window": 512},
    "gemma-1b": {"vocab_size": 262144, "hidden_size": 1152, "intermediate_size": 6912, "num_hidden_layers": 26,
                 "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256, "sliding_window": 512},
    # --smoke: the same code paths in seconds on a CPU
    "tiny": {"vocab_size": 4096, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32, "sliding_window": 64},
}


def synthetic_examples(n: int, max_len: int, vocab: int, seed: int = 0) -> list[Any]:
    """Chat-like lengths (log-normal, ~30 to max_len tokens, most short); the prompt (~40%) is masked and the
    answer repeats an 8-token motif given at the prompt's end, which LoRA can learn to copy."""
    rng = random.Random(seed)
    top = min(vocab, 8000)
    out = []
    for _ in range(n):
        length = max(16, min(max_len, int(rng.lognormvariate(5.0, 0.7))))
        motif = [rng.randrange(10, top) for _ in range(8)]
        prompt_len = max(9, int(length * 0.4))
        prompt = [rng.randrange(10, top) for _ in range(prompt_len - 8)] + motif
        answer = (motif * (length // 8 + 1))[:length - prompt_len]
        ids = prompt + answer
        out.append(SimpleNamespace(input_ids=ids, labels=[-100] * prompt_len + answer))
    return out


def install_synthetic(shape: str, examples: int, max_len: int) -> None:
    """Make ``core.train.setup.load_model`` / ``prepare_data`` build the random-weight shape and the synthetic
    data (in this process only: each variant runs in its own)."""
    from llamaforge_tui.core.train import setup as setup_mod

    spec = SHAPES[shape]

    def load_model(config: Any, settings: Any, precision: Any, device: Any) -> Any:
        import torch
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        cfg = Gemma3TextConfig(**spec, max_position_embeddings=max(2048, max_len), tie_word_embeddings=True)
        torch.manual_seed(1234)
        with torch.device(device):
            model = Gemma3ForCausalLM(cfg)
        model = model.to(precision.torch_dtype())
        if torch.device(device).type == "cuda":  # the fp32 init is not the run's: count from the loaded model
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        tok = SimpleNamespace(pad_token_id=0, eos_token_id=1, pad_token="<pad>", eos_token="<eos>")
        return setup_mod.ModelBundle(model, tok, None, "gemma3", {"architecture": "gemma3", "synthetic": shape})

    def prepare_data(config: Any, bundle: Any) -> Any:
        train = synthetic_examples(examples, max_len, spec["vocab_size"])
        return setup_mod.DataBundle(train, [], {"train_examples": len(train), "eval_examples": 0,
                                                "invalid_records": 0, "warnings": []})

    setup_mod.load_model = load_model
    setup_mod.prepare_data = prepare_data


# -- ceiling ---------------------------------------------------------------------------------------
def matmul_ceiling(device: str) -> float:
    """bf16 matmul GFLOP/s on ``device`` (2048^3 on a CPU, 8192^3 on a GPU; best of the timed reps)."""
    import torch

    n, reps = (8192, 10) if device == "cuda" else (2048, 4)
    a = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    b = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    best = float("inf")
    for i in range(reps + 2):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def flops_per_token(model: Any, label_fraction: float) -> float:
    """Matmul FLOPs of one trained token under LoRA: forward + input-gradient of every block projection
    (4 x params), and the head's forward + input-gradient (4 x V x H) at the labelled share of tokens.
    Attention scores and the small LoRA matmuls are left out (a floor, not an exact count)."""
    block = sum(p.numel() for n, p in model.named_parameters() if ".layers." in n and p.ndim == 2 and "lora" not in n)
    head = model.get_output_embeddings()
    head_params = head.weight.numel() if getattr(head, "weight", None) is not None else 0
    return 4.0 * block + 4.0 * head_params * label_fraction


# -- quality -------------------------------------------------------------------------------------------
def end_loss(model: Any, examples: list, max_seq_len: int) -> float:
    """Mean token loss of the trained model over every training example, one example at a time (no padding),
    under the autocast of its frozen weights' dtype. Unlike the last-quarter mean of the training losses it
    does not depend on which batches the last steps drew, so variants with different batch orders compare."""
    import torch

    from llamaforge_tui.core.train.batching import Batch, to_segments
    from llamaforge_tui.core.train.loss import causal_lm_loss_sum

    frozen = next(p for p in model.parameters() if not p.requires_grad)
    device = frozen.device
    autocast = frozen.dtype if frozen.dtype in (torch.bfloat16, torch.float16) else None
    total, targets = 0.0, 0
    model.eval()
    with torch.no_grad(), torch.autocast(device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        for seg in to_segments(examples, max_seq_len):
            total += float(causal_lm_loss_sum(model, **Batch(((seg,),)).tensors(device)))
            targets += seg.n_targets
    return total / max(targets, 1)


# -- table -----------------------------------------------------------------------------------------
def last_quarter(losses: list[float]) -> float:
    tail = losses[-max(1, len(losses) // 4):]
    return sum(tail) / len(tail)


def steady(step_times: list[float], step_tokens: list[int]) -> float:
    """tokens/s over the last three quarters of the steps (warm-up and compilation left out)."""
    k = max(1, len(step_times) // 4)
    if len(step_times) <= k:
        return float("nan")
    return sum(step_tokens[k:]) / max(step_times[-1] - step_times[k - 1], 1e-9)


def print_table(rows: list[dict], mem_name: str) -> None:
    """One line per (group, variant); each group's ratios are against its 'baseline' (or 'ref') row."""
    head = (f"{'group':<12}{'variant':<20}{'steps':>6}{'tok/s':>9}{'steady':>9}{mem_name:>14}{'loss(q4)':>10}"
            f"{'x tok/s':>9}{'x steady':>9}{'x mem':>7}{'loss %':>8}{'end loss':>10}{'end %':>8}  notes")
    print("\n" + head + "\n" + "-" * len(head))
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    for name, members in groups.items():
        ref = next((r for r in members if r.get("ref") and r.get("ok")), None)
        for r in members:
            if not r.get("ok"):
                print(f"{name:<12}{r['variant']:<20}  FAILED: {r.get('error', '?')[:150]}")
                continue
            ratio, end = "", ""
            if ref is not None and r is not ref:
                ratio = (f"{r['tokens_per_second'] / ref['tokens_per_second']:>9.2f}"
                         f"{r['steady_tokens_per_second'] / ref['steady_tokens_per_second']:>9.2f}"
                         f"{r['peak_memory'] / max(ref['peak_memory'], 1):>7.2f}"
                         f"{100 * (r['final_loss'] / ref['final_loss'] - 1):>+7.1f}%")
            if r.get("end_loss") is not None:
                end = f"{r['end_loss']:>10.4f}"
                if ref is not None and r is not ref and ref.get("end_loss"):
                    end += f"{100 * (r['end_loss'] / ref['end_loss'] - 1):>+7.1f}%"
                else:
                    end += f"{'':>8}"
            if r is ref:
                ratio = f"{'(ref)':>9}{'':>9}{'':>7}{'':>8}"
            print(f"{name:<12}{r['variant']:<20}{r['steps']:>6}{r['tokens_per_second']:>9.1f}"
                  f"{r['steady_tokens_per_second']:>9.1f}{r['peak_memory'] / 2**20:>10.0f} MiB"
                  f"{r['final_loss']:>10.4f}{ratio}{end}  {'; '.join(r.get('notes', []))}")
