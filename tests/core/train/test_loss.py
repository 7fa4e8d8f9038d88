"""The chunked head loss: same value and gradients as the model's own loss, softcap included, and the
head runs only at labelled positions."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from llamaforge_tui.core.train import loss as loss_mod  # noqa: E402
from llamaforge_tui.core.train.batching import Batch, Segment, plan_epoch, to_segments  # noqa: E402
from tests.fixtures.train_models import make_tiny_llama  # noqa: E402


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    from transformers import AutoModelForCausalLM

    path = make_tiny_llama(tmp_path_factory.mktemp("tiny") / "model")
    return AutoModelForCausalLM.from_pretrained(str(path))


def _shifted(labels: torch.Tensor) -> torch.Tensor:
    return torch.cat([labels[:, 1:], torch.full((labels.shape[0], 1), -100)], dim=1)


def test_matches_model_loss_and_gradients(tiny_lm) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    ids = torch.randint(0, 300, (2, 16))
    labels = ids.clone()
    labels[:, :6] = -100
    tiny_lm.zero_grad()
    ref = tiny_lm(input_ids=ids, labels=labels).loss
    ref.backward()
    ref_grads = {n: p.grad.clone() for n, p in tiny_lm.named_parameters() if "lm_head" not in n}
    tiny_lm.zero_grad()
    targets = _shifted(labels)
    total = loss_mod.causal_lm_loss_sum(tiny_lm, ids, torch.arange(16).expand(2, 16), targets)
    (total / (targets != -100).sum()).backward()
    assert torch.allclose(total / (targets != -100).sum(), ref, rtol=1e-5)
    for name, grad in ref_grads.items():
        assert torch.allclose(tiny_lm.get_parameter(name).grad, grad, atol=1e-6, rtol=1e-4), name


def test_packed_row_equals_separate_sequences(tiny_lm) -> None:  # noqa: ANN001
    torch.manual_seed(1)
    a, b = torch.randint(0, 300, (1, 9)), torch.randint(0, 300, (1, 13))
    sep = sum(float(loss_mod.causal_lm_loss_sum(tiny_lm, x, torch.arange(x.shape[1])[None], _shifted(x)))
              for x in (a, b))
    row = torch.cat([a, b], dim=1)
    pos = torch.cat([torch.arange(9), torch.arange(13)])[None]
    tgt = torch.cat([_shifted(a), _shifted(b)], dim=1)
    assert float(loss_mod.causal_lm_loss_sum(tiny_lm, row, pos, tgt)) == pytest.approx(sep, rel=1e-5)


@pytest.mark.parametrize("softcap", [None, 5.0])
def test_head_cross_entropy_gradient_with_softcap_and_small_chunks(softcap: float | None) -> None:
    torch.manual_seed(2)
    hidden = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64)
    targets = torch.randint(0, 50, (37,))
    ours = loss_mod.head_cross_entropy(hidden, weight, targets, softcap=softcap, chunk=8)
    (g_ours,) = torch.autograd.grad(ours, hidden)
    logits = hidden @ weight.T
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    ref = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    (g_ref,) = torch.autograd.grad(ref, hidden)
    assert float(ours) == pytest.approx(float(ref), rel=1e-10)
    assert torch.allclose(g_ours, g_ref, atol=1e-10)


def test_trainable_head_falls_back_to_autograd() -> None:
    torch.manual_seed(3)
    hidden = torch.randn(20, 8, requires_grad=True)
    weight = torch.randn(30, 8, requires_grad=True)
    targets = torch.randint(0, 30, (20,))
    loss_mod.head_cross_entropy(hidden, weight, targets, chunk=7).backward()
    ref_w = weight.detach().clone().requires_grad_()
    torch.nn.functional.cross_entropy(hidden.detach() @ ref_w.T, targets, reduction="sum").backward()
    assert torch.allclose(weight.grad, ref_w.grad, atol=1e-5)


def test_head_runs_only_at_labelled_positions(tiny_lm, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    rows_seen: list[int] = []
    real = loss_mod.head_cross_entropy

    def spy(hidden, weight, targets, **kw):  # noqa: ANN001, ANN003, ANN202
        rows_seen.append(hidden.shape[0])
        return real(hidden, weight, targets, **kw)

    monkeypatch.setattr(loss_mod, "head_cross_entropy", spy)
    ids = torch.randint(0, 300, (1, 40))
    targets = torch.full((1, 40), -100)
    targets[0, 30:35] = ids[0, 31:36]
    loss_mod.causal_lm_loss_sum(tiny_lm, ids, torch.arange(40)[None], targets)
    assert rows_seen == [5]


def test_bf16_autocast_loss_is_close_to_fp32(tiny_lm) -> None:  # noqa: ANN001
    torch.manual_seed(4)
    ids = torch.randint(0, 300, (2, 24))
    pos, tgt = torch.arange(24).expand(2, 24), _shifted(ids)
    fp32 = float(loss_mod.causal_lm_loss_sum(tiny_lm, ids, pos, tgt))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = loss_mod.causal_lm_loss_sum(tiny_lm, ids, pos, tgt)
    assert bf16.dtype == torch.float32  # the loss itself stays fp32
    assert float(bf16) == pytest.approx(fp32, rel=0.02)


class _Ex:
    def __init__(self, n: int, prompt: int) -> None:
        self.input_ids = list(range(1, n + 1))
        self.labels = [-100] * prompt + self.input_ids[prompt:]


def test_batching_plans_are_deterministic_and_pack_without_loss() -> None:
    examples = [_Ex(n, 3) for n in (5, 30, 12, 7, 60, 22, 9, 40, 16, 3)]
    segs = to_segments(examples, max_seq_len=32)
    assert all(len(s.input_ids) <= 32 for s in segs)
    assert segs[0].targets == (-100, -100, 4, 5, -100)  # shifted: position t predicts token t+1
    a = plan_epoch(segs, batch_size=2, max_seq_len=64, packing=True, seed=7, epoch=0)
    b = plan_epoch(segs, batch_size=2, max_seq_len=64, packing=True, seed=7, epoch=0)
    c = plan_epoch(segs, batch_size=2, max_seq_len=64, packing=True, seed=7, epoch=1)
    assert a == b and a != c
    assert sum(x.n_targets for x in a) == sum(s.n_targets for s in segs)
    assert all(sum(len(s.input_ids) for s in row) <= 64 for x in a for row in x.rows)
    grouped = plan_epoch(segs, batch_size=2, max_seq_len=64, packing=False, seed=7, epoch=0)
    assert sum(x.n_tokens for x in grouped) == sum(len(s.input_ids) for s in segs)
    t = Batch(((Segment((1, 2, 3), (2, 3, -100)),), (Segment((4,), (-100,)), Segment((5, 6), (6, -100))))).tensors("cpu")
    assert t["position_ids"].tolist() == [[0, 1, 2], [0, 0, 1]]
    assert t["targets"][0].tolist() == [2, 3, -100]


from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@given(n_rows=st.integers(0, 5000), chunk=st.integers(1, 600))
def test_chunk_bounds_cover_rows_evenly_in_fewest_chunks(n_rows: int, chunk: int) -> None:
    bounds = loss_mod.chunk_bounds(n_rows, chunk)
    limit = max(1, int(chunk * (1 + loss_mod.CHUNK_SLACK)))
    assert [i for a, b in bounds for i in range(a, b)] == list(range(n_rows))  # every row once, in order
    sizes = [b - a for a, b in bounds]
    assert all(0 < s <= limit for s in sizes)
    assert not sizes or max(sizes) - min(sizes) <= 1
    assert len(bounds) == -(-n_rows // limit)  # no more chunks than the limit needs


def test_chunk_bounds_fold_a_short_tail_into_one_chunk() -> None:
    # not 128 + 9: each chunk streams the whole head twice
    assert loss_mod.chunk_bounds(137, 128) == [(0, 137)]
    assert loss_mod.chunk_bounds(300, 128) == [(0, 150), (150, 300)]


def test_workspace_keeps_one_logits_buffer_and_changes_nothing() -> None:
    torch.manual_seed(5)
    weight = torch.randn(97, 12)
    workspace: dict = {}
    buffers = []
    for n in (40, 25, 40):
        hidden = torch.randn(n, 12, requires_grad=True)
        targets = torch.randint(0, 97, (n,))
        fresh = hidden.detach().clone().requires_grad_()
        ours = loss_mod.head_cross_entropy(hidden, weight, targets, chunk=16, workspace=workspace)
        ref = loss_mod.head_cross_entropy(fresh, weight, targets, chunk=16)
        ours.backward()
        ref.backward()
        assert torch.equal(ours, ref) and torch.equal(hidden.grad, fresh.grad)
        buffers.extend(workspace.values())
    assert len(workspace) == 1 and all(b is buffers[0] for b in buffers)  # one buffer, reused by every call
