"""judge_adapter_parts on synthetic logits: llama.cpp-like compute noise above the Q8_0 end-to-end gate does not
fail a correct adapter; a dropped, permuted or over-scaled adapter fails however quiet the kernels are."""

from __future__ import annotations

import numpy as np
import pytest

from llamaforge_tui.core.export.verify import GATES, compare_logits, judge, judge_adapter_parts

VOCAB, N = 64, 96


def _logits(seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    base = [rng.normal(0, 3, (N, VOCAB)).astype(np.float32) for _ in range(2)]
    effect = [rng.normal(0, 1.5, (N, VOCAB)).astype(np.float32) for _ in range(2)]
    return base, effect


def _noise(seed: int, scale: float) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0, scale, (N, VOCAB)).astype(np.float32) for _ in range(2)]


def _judge(base: list[np.ndarray], reference: list[np.ndarray], llama_base: list[np.ndarray],
           candidate: list[np.ndarray]):  # noqa: ANN202
    end_to_end = judge(compare_logits(reference, candidate), "q8_0", label="adapter")
    effect = compare_logits(reference, base).mean_kl
    return end_to_end, judge_adapter_parts(end_to_end, reference, base, llama_base, candidate, effect, "q8_0")


@pytest.mark.parametrize("noise", [0.05, 0.15])
def test_compute_noise_does_not_fail_a_correct_adapter(noise: float) -> None:
    base, effect = _logits()
    reference = [b + e for b, e in zip(base, effect)]
    kernel = _noise(1, noise)  # llama.cpp's arithmetic on the base: in both of its runs
    jitter = _noise(2, noise / 4)  # and the part that differs once the adapter changes the activations
    llama_base = [b + k for b, k in zip(base, kernel)]
    candidate = [r + k + j for r, k, j in zip(reference, kernel, jitter)]
    end_to_end, v = _judge(base, reference, llama_base, candidate)
    if noise >= 0.15:
        assert end_to_end.mean_kl > GATES["q8_0"][1]  # a single end-to-end gate would have failed it
    assert v.passed and v.method == "parts" and set(v.parts) == {"kernel", "adapter"}, v.parts
    assert v.parts["adapter"].mean_kl < v.mean_kl and v.notes


@pytest.mark.parametrize("fault", ["dropped", "permuted", "scale x3"])
def test_a_broken_adapter_fails_even_with_quiet_kernels(fault: str) -> None:
    base, effect = _logits()
    reference = [b + e for b, e in zip(base, effect)]
    perm = np.random.default_rng(3).permutation(VOCAB)
    applied = {"dropped": [np.zeros_like(e) for e in effect], "permuted": [e[:, perm] for e in effect],
               "scale x3": [3 * e for e in effect]}[fault]
    kernel = _noise(1, 0.01)
    llama_base = [b + k for b, k in zip(base, kernel)]
    candidate = [b + a + k for b, a, k in zip(base, applied, kernel)]
    _, v = _judge(base, reference, llama_base, candidate)
    assert not v.passed and v.parts["kernel"].passed and not v.parts["adapter"].passed, v.parts
    assert any(w.startswith("adapter on q8_0 adapter:") for w in v.warnings)
