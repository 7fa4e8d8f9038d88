"""Exactness of the speed levers: each one gives the eager path's loss and gradients (within tolerance), and
each one falls back to eager, saying so, when it cannot run."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from llamaforge_tui.core.errors import ConfigError
from llamaforge_tui.core.train import compile as compile_mod
from llamaforge_tui.core.train import config as config_mod
from llamaforge_tui.core.train import loss as loss_mod
from llamaforge_tui.core.train.batching import Batch, Segment
from llamaforge_tui.core.train.config import TrainConfig
from tests.fixtures.train_models import make_tiny_llama


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory):
    from transformers import AutoModelForCausalLM

    path = make_tiny_llama(tmp_path_factory.mktemp("tiny") / "model")
    return AutoModelForCausalLM.from_pretrained(str(path))


def _reference(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
               softcap: float | None) -> torch.Tensor:
    logits = hidden.to(torch.float64) @ weight.to(torch.float64).T
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    return torch.nn.functional.cross_entropy(logits, targets, reduction="sum")


@pytest.mark.parametrize("softcap", [None, 5.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_eager_chunk_kernel_matches_autograd(softcap: float | None, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    hidden = (torch.randn(45, 16) * 2).to(dtype).requires_grad_()
    weight = torch.randn(70, 16).to(dtype)
    targets = torch.randint(0, 70, (45,))
    ours = loss_mod.head_cross_entropy(hidden, weight, targets, softcap=softcap, chunk=16, kernel="eager")
    (g_ours,) = torch.autograd.grad(ours, hidden)
    h64 = hidden.detach().to(torch.float64).requires_grad_()
    ref = _reference(h64, weight, targets, softcap)
    (g_ref,) = torch.autograd.grad(ref, h64)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert float(ours) == pytest.approx(float(ref), rel=tol)
    assert torch.allclose(g_ours.to(torch.float64), g_ref, atol=tol * 5, rtol=tol * 5)


def test_pure_chunk_kernel_equals_eager_kernel() -> None:
    """The function torch.compile fuses is the same maths as the in-place eager one (checked uncompiled: fast)."""
    torch.manual_seed(1)
    logits = torch.randn(9, 33, dtype=torch.float64) * 4
    targets = torch.randint(0, 33, (9,))
    for softcap in (None, 3.0):
        a_loss, a_grad = loss_mod.chunk_loss_and_grad(logits.clone(), targets, softcap or 0.0)
        b_loss, b_grad = loss_mod._chunk_eager(logits.clone(), targets, softcap)
        assert float(a_loss) == pytest.approx(float(b_loss), rel=1e-12)
        assert torch.allclose(a_grad, b_grad, atol=1e-12)


def test_auto_head_kernel_is_the_measured_eager_one() -> None:
    assert not loss_mod.default_head_compiled("cpu", 262144)
    assert not loss_mod.default_head_compiled("cuda", 262144)
    assert loss_mod._chunk_kernel("auto", "cpu", 262144) is loss_mod._chunk_eager
    assert loss_mod._chunk_kernel("eager", "cpu", 262144) is loss_mod._chunk_eager


def test_compiled_head_kernel_that_fails_falls_back_to_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_a: object) -> None:
        raise RuntimeError("inductor exploded")

    monkeypatch.setattr(loss_mod, "_KERNELS", {"compiled": broken})
    torch.manual_seed(2)
    hidden = torch.randn(12, 8, requires_grad=True)
    weight = torch.randn(20, 8)
    targets = torch.randint(0, 20, (12,))
    ours = loss_mod.head_cross_entropy(hidden, weight, targets, chunk=5, kernel="compiled")
    assert float(ours) == pytest.approx(float(_reference(hidden, weight, targets, None)), rel=1e-5)
    assert loss_mod._KERNELS.get("failed") is True  # later chunks go straight to eager


@pytest.mark.slow
@pytest.mark.parametrize("softcap", [None, 5.0])
def test_compiled_head_kernel_matches_eager(softcap: float | None) -> None:
    torch.manual_seed(3)
    hidden = torch.randn(40, 16, requires_grad=True)
    weight = torch.randn(64, 16)
    targets = torch.randint(0, 64, (40,))
    outs = {}
    for kind in ("eager", "compiled"):
        loss = loss_mod.head_cross_entropy(hidden, weight, targets, softcap=softcap, chunk=16, kernel=kind)
        outs[kind] = (float(loss), torch.autograd.grad(loss, hidden)[0])
    assert not loss_mod._KERNELS.get("failed")
    assert outs["compiled"][0] == pytest.approx(outs["eager"][0], rel=1e-5)
    assert torch.allclose(outs["compiled"][1], outs["eager"][1], atol=1e-5)


# -- bucketing -------------------------------------------------------------------------------------
def test_bucketed_width_pads_without_targets_and_keeps_the_loss(tiny_lm) -> None:
    assert [compile_mod.bucket_width(w, 64) for w in (1, 64, 65, 130)] == [64, 64, 128, 192]
    assert compile_mod.bucket_width(37, 0) == 37
    batch = Batch(((Segment(tuple(range(5, 25)), tuple(range(6, 25)) + (-100,)),),
                   (Segment(tuple(range(30, 41)), (-100,) * 5 + tuple(range(36, 41)) + (-100,)),)))
    plain = batch.tensors("cpu")
    bucketed = batch.tensors("cpu", multiple=16)
    assert plain["input_ids"].shape == (2, 20) and bucketed["input_ids"].shape == (2, 32)
    assert int((bucketed["targets"] != -100).sum()) == batch.n_targets
    a = float(loss_mod.causal_lm_loss_sum(tiny_lm, **plain))
    b = float(loss_mod.causal_lm_loss_sum(tiny_lm, **bucketed))
    assert b == pytest.approx(a, rel=1e-5)


# -- regional compile --------------------------------------------------------------------------------
def test_decoder_layers_found_and_auto_stays_eager_on_cpu(tiny_lm) -> None:
    layers = compile_mod.decoder_layers(tiny_lm)
    assert len(layers) == tiny_lm.config.num_hidden_layers
    assert compile_mod.compile_layers(tiny_lm, "auto", "cpu") == (0, "compile: off (eager layers)")
    assert compile_mod.compile_layers(tiny_lm, "off", "cuda")[0] == 0


def test_compile_without_a_compiler_says_so(tiny_lm, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda _name: None)
    count, note = compile_mod.compile_layers(tiny_lm, "on", "cpu")
    assert count == 0 and "no C++ compiler" in note
    assert all(getattr(layer, "_compiled_call_impl", None) is None for layer in compile_mod.decoder_layers(tiny_lm))


def test_compile_errors_are_told_apart_from_model_errors() -> None:
    import torch._dynamo.exc as dynamo_exc

    assert compile_mod.is_compile_error(dynamo_exc.TorchRuntimeError("x"))
    assert not compile_mod.is_compile_error(RuntimeError("shape mismatch"))


@pytest.mark.slow
def test_compiled_layers_match_eager_loss_and_gradients(tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    path = make_tiny_llama(tmp_path / "model")
    torch.manual_seed(4)
    ids = torch.randint(0, 300, (2, 24))
    pos = torch.cat([torch.arange(10), torch.arange(14)]).expand(2, 24)  # packed rows: position resets
    tgt = torch.cat([ids[:, 1:], torch.full((2, 1), -100)], dim=1)
    results = []
    for compiled in (False, True):
        torch.manual_seed(5)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(path)),
                               LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
        for n, p in model.named_parameters():  # LoRA B starts at zero: give it values so its gradient is real
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.1)
        if compiled:
            assert compile_mod.compile_layers(model, "on", "cpu")[0] == 2
        loss = loss_mod.causal_lm_loss_sum(model.get_base_model(), ids, pos, tgt)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((float(loss), grads))
    (eager_loss, eager_grads), (comp_loss, comp_grads) = results
    assert comp_loss == pytest.approx(eager_loss, rel=1e-4)
    for name, grad in eager_grads.items():
        assert torch.allclose(comp_grads[name], grad, atol=1e-5, rtol=1e-3), name


# -- options -----------------------------------------------------------------------------------------
def test_options_validate_and_match_the_modules() -> None:
    assert config_mod.COMPILE_MODES == compile_mod.COMPILE_MODES
    assert config_mod.HEAD_KERNELS == loss_mod.HEAD_KERNELS
    cfg = TrainConfig(compile="on", head_kernel="eager")
    assert cfg.to_dict()["compile"] == "on"
    with pytest.raises(ConfigError, match="compile must be one of"):
        TrainConfig(compile="yes")
    with pytest.raises(ConfigError, match="head_kernel must be one of"):
        TrainConfig(head_kernel="triton")


def test_cli_flags_reach_the_config() -> None:
    import argparse

    from llamaforge_tui.commands import train as train_cmd

    parser = argparse.ArgumentParser()
    train_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["train", "--compile", "off", "--head-kernel", "compiled"])
    cfg = train_cmd.build_config(args)
    assert (cfg.compile, cfg.head_kernel) == ("off", "compiled")
