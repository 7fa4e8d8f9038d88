"""A micro-batch split into row groups (``pass_tokens``) makes the same step; the head's tiled softmax gives
the one-pass kernel's loss and gradient without a chunk-sized fp32 buffer."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from llamaforge_tui.core.train import loss as loss_mod
from llamaforge_tui.core.train.batching import Batch, Segment
from llamaforge_tui.core.train.config import TrainConfig, pass_tokens_for
from llamaforge_tui.core.errors import ConfigError


def _batch(widths: list[int]) -> Batch:
    return Batch(tuple((Segment(tuple(range(1, w + 1)), tuple(range(2, w + 2))),) for w in widths))


@given(st.lists(st.integers(1, 300), min_size=1, max_size=12), st.integers(0, 2000))
def test_split_keeps_every_row_in_order_within_the_budget(widths: list[int], budget: int) -> None:
    batch = _batch(widths)
    parts = batch.split(budget)
    assert tuple(r for p in parts for r in p.rows) == batch.rows
    if budget <= 0 or len(widths) * max(widths) <= budget:
        assert parts == (batch,)
        return
    assert len(parts) > 1 or len(widths) == 1
    for p in parts:
        assert len(p.rows) == 1 or len(p.rows) * p.width <= budget
    assert sum(p.n_targets for p in parts) == batch.n_targets


def test_split_is_even() -> None:
    assert [len(p.rows) for p in _batch([331, 300, 290, 280]).split(1024)] == [2, 2]
    assert [len(p.rows) for p in _batch([100] * 8).split(400)] == [4, 4]


def test_pass_tokens_default_and_validation() -> None:
    assert pass_tokens_for(None, "cpu") == 1024 and pass_tokens_for(None, "cuda") == 0
    assert pass_tokens_for(0, "cpu") == 0 and pass_tokens_for(300, "cuda") == 300
    with pytest.raises(ConfigError, match="pass_tokens"):
        TrainConfig(pass_tokens=-1)


@pytest.mark.parametrize("softcap", [None, 30.0])
def test_tiled_head_softmax_equals_the_one_pass_kernel(softcap: float | None) -> None:
    torch.manual_seed(0)
    vocab = 5000
    logits = (torch.randn(6, vocab) * 4).bfloat16()
    targets = torch.tensor([0, 4999, 1024, 1023, 17, 2048])
    ref_loss, ref_grad = loss_mod._chunk_eager(logits.clone(), targets, softcap, torch.empty(6, vocab))
    one_loss, one_grad = loss_mod._chunk_tiled(logits.clone(), targets, softcap, tile=vocab)
    assert torch.equal(one_grad, ref_grad) and float(one_loss) == pytest.approx(float(ref_loss), rel=1e-6)
    loss, grad = loss_mod._chunk_tiled(logits.clone(), targets, softcap, tile=1024)  # 5 tiles, the last short
    exact_loss, exact_grad = loss_mod.chunk_loss_and_grad(logits.double(), targets, softcap)
    assert float(loss) == pytest.approx(float(exact_loss), rel=1e-5)
    assert (grad.double() - exact_grad).abs().max() <= (ref_grad.double() - exact_grad).abs().max() + 1e-3
