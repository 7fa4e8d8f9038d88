"""core/train/attention.py: the folded-matmul attention gives an fp64 reference's output and gradients (grouped
query heads, sliding windows, packed rows, rows that see nothing), steps aside to SDPA where it does not fit,
and through the trainer gives SDPA's losses, eager and compiled."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from llamaforge_tui.core.train import attention
from llamaforge_tui.core.train import config as config_mod


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor,
               scale: float) -> torch.Tensor:
    """fp64 softmax attention, [B, S, H, D]; a row that sees nothing gives 0."""
    g = q.shape[1] // k.shape[1]
    k = k.double().repeat_interleave(g, dim=1)
    v = v.double().repeat_interleave(g, dim=1)
    scores = (q.double() @ k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~allowed, float("-inf"))
    p = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return (p @ v).transpose(1, 2)


def _qkv(b: int, h: int, hk: int, s: int, d: int, dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    torch.manual_seed(seed)
    return [(torch.randn(b, n, s, d) * 1.5).to(dtype).requires_grad_() for n in (h, hk, hk)]


def _window_mask(n: int, window: int) -> torch.Tensor:
    """[S, S] bool: causal, and within ``window`` positions."""
    pos = torch.arange(n)
    return (pos[None, :] <= pos[:, None]) & (pos[:, None] - pos[None, :] < window)


def _packed_mask(b: int, lengths: list[int]) -> torch.Tensor:
    """[B, 1, S, S] bool: causal within each packed example, nothing across them."""
    doc = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])
    pos = torch.arange(len(doc))
    allowed = (doc[:, None] == doc[None, :]) & (pos[None, :] <= pos[:, None])
    return allowed.expand(b, 1, len(doc), len(doc)).clone()


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor, tol: float) -> None:
    scale = q.shape[-1] ** -0.5
    out = attention.folded_attention(q, k, v, allowed, scale)
    grad = torch.randn_like(out, dtype=torch.float32).to(out.dtype)
    ours = torch.autograd.grad(out, (q, k, v), grad)
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = _reference(*leaves, allowed, scale)
    refs = torch.autograd.grad(ref, leaves, grad.double())
    assert out.shape == ref.shape and out.dtype == q.dtype

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a.detach().double() - b.detach()).norm() / b.detach().norm().clamp_min(1e-30))

    assert rel(out, ref) < tol
    for name, a, b in zip("qkv", ours, refs):
        assert torch.isfinite(a).all(), name
        assert rel(a, b) < tol, name


@pytest.mark.parametrize(("h", "hk"), [(4, 1), (4, 2), (6, 3), (4, 4)])
def test_folded_attention_matches_fp64_causal(h: int, hk: int) -> None:
    q, k, v = _qkv(2, h, hk, 19, 16, torch.float32)
    _check(q, k, v, attention._allowed(19, 19, "cpu"), 1e-5)


def test_sliding_window_and_packed_rows_match_fp64() -> None:
    q, k, v = _qkv(2, 4, 1, 23, 16, torch.float32, seed=1)
    _check(q, k, v, _window_mask(23, 5), 1e-5)
    _check(q, k, v, _packed_mask(2, [7, 11, 5]), 1e-5)


def test_a_row_that_sees_nothing_gives_zero_and_finite_gradients() -> None:
    q, k, v = _qkv(1, 4, 2, 9, 8, torch.float32, seed=2)
    allowed = _packed_mask(1, [4, 5])
    allowed[..., 6, :] = False  # padding: this query sees no key
    _check(q, k, v, allowed, 1e-5)
    out = attention.folded_attention(q, k, v, allowed, 8 ** -0.5)
    assert torch.equal(out[0, 6], torch.zeros_like(out[0, 6]))


def test_bf16_is_as_close_as_the_flash_kernel() -> None:
    """bf16 inputs: fp32 scores and softmax, so the error is bf16's rounding of inputs and outputs, no worse than
    SDPA's own CPU kernel against the same fp64 reference."""
    q, k, v = _qkv(2, 4, 1, 40, 64, torch.bfloat16, seed=3)
    allowed = attention._allowed(40, 40, "cpu")
    _check(q, k, v, allowed, 1.2e-2)
    scale = 64 ** -0.5
    ours = attention.folded_attention(q, k, v, allowed, scale).float()
    ref = _reference(q, k, v, allowed, scale)
    flash = torch.nn.functional.scaled_dot_product_attention(q, k.repeat_interleave(4, 1), v.repeat_interleave(4, 1),
                                                             is_causal=True).transpose(1, 2).double()
    assert (ours.double() - ref).norm() <= 1.5 * (flash - ref).norm()


class _Module(torch.nn.Module):
    is_causal = True


def _forward_or_fallback(monkeypatch: pytest.MonkeyPatch, q: torch.Tensor, k: torch.Tensor, mask: object,
                         **kwargs: object) -> str:
    import transformers.integrations.sdpa_attention as sdpa_mod

    monkeypatch.setattr(sdpa_mod, "sdpa_attention_forward", lambda *_a, **_k: ("sdpa", None))
    out, _ = attention.matmul_attention_forward(_Module(), q, k, k, mask, **kwargs)
    return "sdpa" if isinstance(out, str) else "matmul"


def test_what_does_not_fit_goes_to_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    q, k = torch.randn(1, 4, 8, 16), torch.randn(1, 2, 8, 16)
    mask = attention._allowed(8, 8, "cpu")[None, None]
    assert _forward_or_fallback(monkeypatch, q, k, None) == "matmul"
    assert _forward_or_fallback(monkeypatch, q, k, mask) == "matmul"
    assert _forward_or_fallback(monkeypatch, q, k, mask, dropout=0.1) == "sdpa"
    assert _forward_or_fallback(monkeypatch, q, k, mask, softcap=50.0) == "sdpa"
    assert _forward_or_fallback(monkeypatch, q, k, mask, output_attentions=True) == "sdpa"
    assert _forward_or_fallback(monkeypatch, q, k, mask, is_causal=False) == "sdpa"
    assert _forward_or_fallback(monkeypatch, q, k, mask.float()) == "sdpa"  # a float (additive) mask
    assert _forward_or_fallback(monkeypatch, q, k[:, :, :5], None) == "sdpa"  # a cache: fewer queries than keys
    assert _forward_or_fallback(monkeypatch, torch.randn(1, 3, 8, 16), k, None) == "sdpa"  # 3 heads on 2
    long = attention.MAX_KEYS + 1
    assert _forward_or_fallback(monkeypatch, torch.randn(1, 1, long, 2), torch.randn(1, 1, long, 2), None) == "sdpa"
    monkeypatch.setattr(attention, "MAX_SCORE_BYTES", 4 * 8 * 8 * 4 - 1)
    assert _forward_or_fallback(monkeypatch, q, k, None) == "sdpa"


def _tiny_gemma() -> torch.nn.Module:
    from transformers import Gemma3TextConfig
    from transformers.models.gemma3.modeling_gemma3 import Gemma3ForCausalLM

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=1, head_dim=32, sliding_window=6,
                           max_position_embeddings=256, attn_implementation="sdpa")
    model = Gemma3ForCausalLM(cfg)
    model.config.use_cache = False
    return model


def _loss_and_grads(model: torch.nn.Module, ids: torch.Tensor, pos: torch.Tensor) -> tuple[float, dict]:
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=ids, position_ids=pos).logits
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    return float(loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_a_model_switched_gives_sdpa_loss_and_gradients_and_switches_back() -> None:
    """A tiny Gemma 3 (4 query heads on 1 kv head, sliding layers of 6), packed rows (positions reset): the
    switched model's loss and every gradient equal SDPA's within fp32 tolerance; restoring puts SDPA back."""
    model = _tiny_gemma()
    torch.manual_seed(1)
    ids = torch.randint(0, 300, (2, 21))
    pos = torch.cat([torch.arange(9), torch.arange(12)]).expand(2, 21)
    calls = []
    real = attention.matmul_attention_forward

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return real(*args, **kwargs)

    ref_loss, ref_grads = _loss_and_grads(model, ids, pos)
    changed, note = attention.use_matmul_attention(model, "matmul", "cpu")
    assert changed and note.startswith("attention: matmul")
    assert model.config._attn_implementation == attention.IMPL_NAME
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    ALL_ATTENTION_FUNCTIONS._global_mapping[attention.IMPL_NAME] = counting
    try:
        loss, grads = _loss_and_grads(model, ids, pos)
    finally:
        ALL_ATTENTION_FUNCTIONS._global_mapping[attention.IMPL_NAME] = real
    assert len(calls) == 2  # both layers, the sliding one and the global one
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        assert torch.allclose(grad, ref_grads[name], atol=1e-6, rtol=1e-4), name
    attention.restore_attention(changed)
    assert model.config._attn_implementation == "sdpa"


def test_modes_and_the_auto_default() -> None:
    assert attention.ATTENTION_MODES == config_mod.ATTENTION_MODES
    assert attention.default_matmul("cpu", compiled=True)
    assert not attention.default_matmul("cpu", compiled=False)
    assert not attention.default_matmul("cuda", compiled=True)
    model = _tiny_gemma()
    assert attention.use_matmul_attention(model, "auto", "cpu", compiled=False) == ([], "attention: sdpa")
    assert attention.use_matmul_attention(model, "sdpa", "cpu", compiled=True) == ([], "attention: sdpa")
    assert attention.use_matmul_attention(model, "matmul", "cuda")[0] == []
    changed, _ = attention.use_matmul_attention(model, "auto", "cpu", compiled=True)
    assert changed
    attention.restore_attention(changed)
    model.config._attn_implementation = "eager"  # a model on eager attention is left alone
    assert attention.use_matmul_attention(model, "matmul", "cpu") == (
        [], "attention: the model's own (not SDPA, left alone)")
    with pytest.raises(ValueError, match="attention must be one of"):
        attention.use_matmul_attention(model, "flash", "cpu")
    with pytest.raises(Exception, match="attention must be one of"):
        config_mod.TrainConfig(attention="flash")


def test_the_cli_flag_reaches_the_config() -> None:
    import argparse

    from llamaforge_tui.commands import train as train_cmd

    parser = argparse.ArgumentParser()
    train_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["train", "--model", "m", "--data", "d.jsonl", "--attention", "matmul"])
    assert train_cmd.build_config(args).attention == "matmul"
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--model", "m", "--data", "d.jsonl", "--attention", "flash"])


def _runs(tmp_path: Path, modes: dict[str, dict], steps: int = 3) -> dict[str, tuple[list[float], list[str]]]:
    """A tiny Llama (4 query heads on 2 kv heads) trained in fp32 per set of options: the step losses and the log
    lines about attention."""
    from tests.fixtures.train_models import train_runs

    return train_runs(tmp_path, modes, lambda message: "attention:" in message, steps)

def test_a_run_with_matmul_attention_matches_sdpa(tmp_path: Path) -> None:
    runs = _runs(tmp_path, {"sdpa": {"attention": "sdpa"}, "matmul": {"attention": "matmul"},
                            "auto": {"attention": "auto"}})
    assert runs["sdpa"][1] == ["attention: sdpa"]
    assert runs["auto"][1] == ["attention: sdpa"]  # eager layers on a CPU: SDPA, as measured
    assert len(runs["matmul"][1]) == 1 and runs["matmul"][1][0].startswith("attention: matmul")
    assert len(runs["matmul"][0]) == 3
    assert runs["matmul"][0] == pytest.approx(runs["sdpa"][0], rel=1e-5)


@pytest.mark.slow
def test_compiled_layers_pick_matmul_attention_and_match_sdpa(tmp_path: Path) -> None:
    """Compiled layers on a CPU: auto picks the folded path, and the losses equal compiled SDPA's."""
    torch._dynamo.reset()
    runs = _runs(tmp_path, {"sdpa": {"compile": "on", "attention": "sdpa"}, "auto": {"compile": "on"}})
    assert runs["sdpa"][1] == ["attention: sdpa"]
    assert len(runs["auto"][1]) == 1 and runs["auto"][1][0].startswith("attention: matmul")
    assert runs["auto"][0] == pytest.approx(runs["sdpa"][0], rel=1e-4)


@pytest.mark.slow
def test_compiled_layers_trace_the_matmul_attention_whole() -> None:
    """Compiled decoder layers of a tiny Gemma 3 (a sliding layer with a mask, a global one without) take the
    folded attention into one graph: no graph break (building the autograd function inside the trace was one)
    and no specialization on the sliding window (a second graph, and its compile, for the sliding layers); and
    the compiled gradients equal the eager ones."""
    import torch._dynamo.utils as dynamo_utils

    from llamaforge_tui.core.train import compile as compile_mod

    torch._dynamo.reset()
    dynamo_utils.counters.clear()
    model = _tiny_gemma()
    torch.manual_seed(1)
    ids = torch.randint(0, 300, (2, 21))
    pos = torch.arange(21).expand(2, 21)
    changed, _ = attention.use_matmul_attention(model, "matmul", "cpu")
    eager_loss, eager_grads = _loss_and_grads(model, ids, pos)
    count, _ = compile_mod.compile_layers(model, "on", "cpu")
    assert count == 2
    try:
        loss, grads = _loss_and_grads(model, ids, pos)
    finally:
        compile_mod.uncompile_layers(model)
        attention.restore_attention(changed)
    assert not dynamo_utils.counters["graph_break"], dict(dynamo_utils.counters["graph_break"])
    assert dynamo_utils.counters["stats"]["unique_graphs"] == 1
    assert loss == pytest.approx(eager_loss, rel=1e-5)
    for name, grad in grads.items():
        assert torch.allclose(grad, eager_grads[name], atol=1e-5, rtol=1e-3), name



@pytest.mark.slow
def test_layers_compiled_late_switch_to_matmul_attention(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``compile auto`` on a CPU compiles the layers after the first steps when the run is long enough; the
    attention is picked again then: SDPA while eager, the folded path once compiled, and the losses stay SDPA's."""
    from llamaforge_tui.core.train import compile as compile_mod

    torch._dynamo.reset()
    monkeypatch.setattr(compile_mod, "late_compile_note",
                        lambda mode, _device, done, *_a: "compiling now" if mode == "auto" and done == 2 else None)
    runs = _runs(tmp_path, {"late": {}, "sdpa": {"attention": "sdpa", "compile": "off"}}, steps=4)
    late = runs["late"][1]
    assert late[0] == "attention: sdpa"
    assert len(late) == 2 and late[1].startswith("compiling now; compile: 2 decoder layers")
    assert "; attention: matmul" in late[1]
    assert runs["late"][0] == pytest.approx(runs["sdpa"][0], rel=1e-4)


def test_a_compile_that_fails_goes_back_to_sdpa(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Layers marked compiled get the folded attention; when their first step fails inside the compiler, the run
    goes back to eager layers and to SDPA, says so, and trains on with SDPA's losses."""
    import torch._dynamo.exc as dynamo_exc

    from llamaforge_tui.core.train import compile as compile_mod
    from llamaforge_tui.core.train import trainer as trainer_mod

    monkeypatch.setattr(compile_mod, "compile_layers", lambda *_a, **_k: (2, "compile: 2 decoder layers (test)"))
    monkeypatch.setattr(compile_mod, "uncompile_layers", lambda _model: None)
    real_step = trainer_mod.TrainingRecipe._train_step
    seen: list[str] = []

    def step(self: trainer_mod.TrainingRecipe) -> tuple:
        seen.append(self.model.get_base_model().config._attn_implementation)
        if len(seen) == 1:
            raise dynamo_exc.TorchRuntimeError("inductor exploded")
        return real_step(self)

    monkeypatch.setattr(trainer_mod.TrainingRecipe, "_train_step", step)
    runs = _runs(tmp_path, {"failed": {"compile": "on"}})
    monkeypatch.setattr(trainer_mod.TrainingRecipe, "_train_step", real_step)
    reference = _runs(tmp_path / "ref", {"sdpa": {"attention": "sdpa"}})
    assert seen[:2] == [attention.IMPL_NAME, "sdpa"]
    lines = runs["failed"][1]
    assert lines[0].startswith("attention: matmul")
    assert lines[1] == "compile failed (TorchRuntimeError); continuing with eager layers; attention: sdpa"
    assert runs["failed"][0] == pytest.approx(reference["sdpa"][0], rel=1e-6)
