"""core/train/fused.py: fused RMSNorm and gated-MLP activations give the module's own forward bit for bit,
gradients within tolerance of autograd, keep less for backward, and step aside for compiled layers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import Gemma3TextConfig, LlamaConfig
from transformers.models.gemma3.modeling_gemma3 import Gemma3ForCausalLM, Gemma3MLP, Gemma3RMSNorm
from transformers.models.llama.modeling_llama import LlamaForCausalLM, LlamaMLP, LlamaRMSNorm

from llamaforge_tui.core.train import compile as compile_mod
from llamaforge_tui.core.train import config as config_mod
from llamaforge_tui.core.train import fused


def _norm(cls: type, width: int = 48) -> torch.nn.Module:
    torch.manual_seed(0)
    norm = cls(width, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_(0.3, 0.5)
    return norm


def _grads(module: torch.nn.Module, x: torch.Tensor, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, dict]:
    module.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    out = module(x)
    torch.manual_seed(seed)
    out.backward(torch.randn_like(out))
    return out.detach(), x.grad, {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("cls", [Gemma3RMSNorm, LlamaRMSNorm])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_norm_equals_the_module_forward_and_autograd(cls: type, dtype: torch.dtype) -> None:
    norm = _norm(cls).to(dtype)
    x = (torch.randn(3, 7, 48) * 4).to(dtype)
    ref_out, ref_dx, ref_dw = _grads(norm, x)
    n, _, _ = fused.fuse_modules(norm, "on")
    assert n == 1 and "forward" in norm.__dict__
    out, dx, dw = _grads(norm, x)
    assert torch.equal(out, ref_out)  # the forward is the same arithmetic
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert torch.allclose(dx.float(), ref_dx.float(), rtol=tol, atol=tol * 1e-1)
    assert torch.allclose(dw["weight"].float(), ref_dw["weight"].float(), rtol=tol, atol=tol)


@pytest.mark.parametrize("kind", ["gemma", "llama"])
def test_fused_mlp_equals_the_module_forward_and_autograd(kind: str) -> None:
    torch.manual_seed(0)
    if kind == "gemma":
        mlp = Gemma3MLP(Gemma3TextConfig(hidden_size=32, intermediate_size=96, hidden_activation="gelu_pytorch_tanh"))
    else:
        mlp = LlamaMLP(LlamaConfig(hidden_size=32, intermediate_size=96, hidden_act="silu"))
    x = torch.randn(2, 5, 32)
    ref_out, ref_dx, ref_dw = _grads(mlp, x)
    _, m, _ = fused.fuse_modules(mlp, "on")
    assert m == 1
    out, dx, dw = _grads(mlp, x)
    assert torch.equal(out, ref_out)
    assert torch.allclose(dx, ref_dx, rtol=1e-5, atol=1e-6)
    assert dw.keys() == ref_dw.keys() and len(dw) == 3
    for name in dw:
        assert torch.allclose(dw[name], ref_dw[name], rtol=1e-5, atol=1e-6), name


def test_a_norm_of_another_form_is_left_alone() -> None:
    """Same class name, other arithmetic (weight applied before the cast): the bit-for-bit check refuses it."""

    class LlamaRMSNorm(torch.nn.Module):  # noqa: N801 - the name is the point
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.full((16,), 1.5))
            self.variance_epsilon = 1e-6

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            xf = x.float()
            return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5) * self.weight).to(x.dtype)

    norm = LlamaRMSNorm()
    n, _, note = fused.fuse_modules(norm, "on")
    assert n == 0 and "forward" not in norm.__dict__ and "left as they were: LlamaRMSNorm" in note


def test_modes_and_the_auto_default() -> None:
    assert config_mod.FUSED_MODES == fused.FUSED_MODES
    norm = _norm(LlamaRMSNorm)
    assert fused.fuse_modules(norm, "off")[0] == 0 and "forward" not in norm.__dict__
    assert fused.fuse_modules(norm, "auto", "cuda")[0] == 0  # measured on the CPU only
    assert fused.fuse_modules(norm, "auto", "cpu")[0] == 1
    with pytest.raises(Exception, match="fused must be one of"):
        config_mod.TrainConfig(fused="maybe")


def _tiny_gemma() -> Gemma3ForCausalLM:
    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=512, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=1, head_dim=32, sliding_window=64,
                           max_position_embeddings=256)
    model = Gemma3ForCausalLM(cfg)
    model.config.use_cache = False
    return model


def _saved_bytes(model: torch.nn.Module, ids: torch.Tensor) -> int:
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=ids).last_hidden_state.float().sum()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(v for k, v in seen.items() if k not in params)


def test_a_model_fused_keeps_less_and_trains_the_same() -> None:
    """A tiny Gemma 3 with LoRA: same logits bit for bit, LoRA gradients within fp32 tolerance, and, in bf16
    under autocast as training runs, fewer bytes kept for backward (the norms' fp32 copies and the
    activation's output are gone)."""
    from peft import LoraConfig, get_peft_model

    ids = torch.randint(0, 512, (2, 40))
    results = []
    for mode in ("off", "on"):
        model = _tiny_gemma()
        norms, mlps, _ = fused.fuse_modules(model, mode)
        torch.manual_seed(1)
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "gate_proj",
                                                                                      "down_proj"]))
        with torch.no_grad():  # LoRA B starts at zero: give it values so its gradients flow into A too
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1)
        logits = model(input_ids=ids).logits
        logits.float().logsumexp(-1).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        decoder = model.get_base_model().model.to(torch.bfloat16)  # as training holds it: bf16 under autocast
        results.append((norms, mlps, logits.detach(), grads, _saved_bytes(decoder, ids)))
    (n0, m0, logits0, g0, kept0), (n1, m1, logits1, g1, kept1) = results
    assert (n0, m0) == (0, 0) and n1 == 2 * 6 + 1 and m1 == 2  # 4 block norms + q/k norms per layer, final norm
    assert torch.equal(logits0, logits1)
    for name in g0:
        assert torch.allclose(g0[name], g1[name], rtol=1e-4, atol=1e-6), name
    assert kept1 < 0.8 * kept0, (kept1, kept0)


def test_compiled_layers_take_the_original_forms_back(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _tiny_gemma()
    fused.fuse_modules(model, "on")
    layer = compile_mod.decoder_layers(model)[0]
    monkeypatch.setattr(compile_mod, "compiler_usable", lambda _d: (True, ""))
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **_k: None)  # no real compile in this test
    compiled, _ = compile_mod.compile_layers(model, "on", "cpu")
    assert compiled == 2
    assert "forward" not in layer.input_layernorm.__dict__ and "forward" not in layer.mlp.__dict__
    assert "forward" in model.model.norm.__dict__  # outside the layers: still fused
    compile_mod.uncompile_layers(model)
    assert "forward" in layer.input_layernorm.__dict__ and "forward" in layer.mlp.__dict__


def fused_runs(tmp_path: Path, log_prefix: str, steps: int) -> dict[str, tuple[list[float], list[str]]]:
    """A tiny Llama trained in fp32 with fused "off" and "on": per mode, the step losses and the log lines that
    start with ``log_prefix``."""
    from tests.fixtures.train_models import train_runs

    return train_runs(tmp_path, {mode: {"fused": mode} for mode in ("off", "on")},
                      lambda message: message.startswith(log_prefix), steps)

def test_a_run_says_what_was_fused_and_matches_an_unfused_run(tmp_path: Path) -> None:
    """Through the trainer, fp32: the run's log names the fused modules, and its losses equal the unfused run's."""
    runs = fused_runs(tmp_path, "fused norms", steps=4)
    assert runs["off"][1] == ["fused norms/activations: off"]
    assert runs["on"][1] and "norms" in runs["on"][1][0] and "MLPs" in runs["on"][1][0]
    assert runs["on"][0] == pytest.approx(runs["off"][0], rel=1e-5)


def test_a_deep_copy_of_a_fused_model_uses_its_own_weights() -> None:
    import copy

    model = _tiny_gemma()
    fused.fuse_modules(model, "on")
    twin = copy.deepcopy(model)
    norm, twin_norm = model.model.norm, twin.model.norm
    with torch.no_grad():
        twin_norm.weight.add_(1.0)
    x = torch.randn(2, 5, 64)
    assert not torch.equal(norm(x), twin_norm(x))
    twin_mlp = twin.model.layers[0].mlp
    assert twin_norm.forward.__self__ is twin_norm and twin_mlp.forward.__self__ is twin_mlp


def _lora_gemma_bf16(fuse: bool) -> torch.nn.Module:
    """A tiny Gemma 3 as training holds it: bf16 weights, fused forms, LoRA on every projection, LoRA B
    non-zero so gradients reach A."""
    from peft import LoraConfig, get_peft_model

    model = _tiny_gemma()
    if fuse:
        fused.fuse_modules(model, "on")
    torch.manual_seed(1)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return model.to(torch.bfloat16)


def _loss_and_grads(model: torch.nn.Module, ids: torch.Tensor, recompute: bool,
                    after_forward: object = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16), fused.recompute_kept_outputs(recompute):
        loss = model(input_ids=ids).logits.float().logsumexp(-1).mean()
    if callable(after_forward):
        after_forward()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_kept_outputs_recomputed_give_the_same_gradients_bit_for_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside recompute_kept_outputs the LoRA A inputs that are fused outputs are kept as recipes (q/k/v's
    norm output and the activation's output, per layer) and rebuilt in backward: the loss and every LoRA
    gradient equal the run that keeps the tensors, exactly."""
    ids = torch.randint(0, 512, (2, 40))
    model = _lora_gemma_bf16(fuse=True)
    recipes: list[tuple[str, tuple[int, ...]]] = []
    pack = fused._pack

    def counting_pack(saved: torch.Tensor) -> object:
        packed = pack(saved)
        if isinstance(packed, fused._Recipe):
            recipes.append((packed.output.recipe.__name__, tuple(packed.size)))
        return packed

    monkeypatch.setattr(fused, "_pack", counting_pack)
    loss0, grads0 = _loss_and_grads(model, ids, recompute=False)
    assert recipes == []
    loss1, grads1 = _loss_and_grads(model, ids, recompute=True)
    assert torch.equal(loss0, loss1)
    assert grads0.keys() == grads1.keys() and len(grads0) == 2 * 14
    for name in grads0:
        assert torch.equal(grads0[name], grads1[name]), name
    # per layer, inside the MLP: the activation's output (down_proj's LoRA A input, 192 wide) and the MLP's
    # norm output (64 wide), kept by gate's and up's LoRA A, one rebuild shared by both
    acts = [size for name, size in recipes if name == "_act_mul"]
    norms = [size for name, size in recipes if name == "_norm_out"]
    assert len(acts) == 2 and all(size[-1] == 192 for size in acts), recipes
    assert len(norms) == 2 * 2 and all(size[-1] == 64 for size in norms), recipes
    assert fused._local.outputs is None  # nothing left behind after the forward


def test_an_output_changed_in_place_is_kept_as_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fused output written to in place after it was offered is no longer what its recipe makes: the hook
    keeps the tensor itself, so gradients stay right."""
    gate, up = torch.randn(3, 8, requires_grad=True), torch.randn(3, 8, requires_grad=True)
    weight = torch.randn(8, 4, requires_grad=True)
    expected = None
    for recompute in (False, True):
        gate.grad = up.grad = weight.grad = None
        with fused.recompute_kept_outputs(recompute), fused._recipes_inside():
            out = fused._fn("act_mul").apply(gate, up, "silu")
            out.mul_(2.0)  # in place, before anything saves it
            (out @ weight).sum().backward()
        got = (gate.grad.clone(), up.grad.clone(), weight.grad.clone())
        if expected is None:
            expected = got
        else:
            assert all(torch.equal(a, b) for a, b in zip(expected, got))


def test_recompute_is_off_when_disabled_and_once_when_nested() -> None:
    with fused.recompute_kept_outputs(False):
        assert getattr(fused._local, "outputs", None) is None
    with fused.recompute_kept_outputs(True):
        outer = fused._local.outputs
        assert outer == {}
        with fused.recompute_kept_outputs(True):
            assert fused._local.outputs is outer
        assert fused._local.outputs is outer
    assert fused._local.outputs is None


def test_recompute_keeps_less_for_backward() -> None:
    """The bytes autograd keeps in a training forward fall by at least the recomputed outputs."""
    ids = torch.randint(0, 512, (2, 40))
    model = _lora_gemma_bf16(fuse=True)
    kept = []
    for recompute in (False, True):
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor) -> object:
            packed = fused._pack(t)  # what the context's own hook does (only the innermost hooks run)
            if isinstance(packed, torch.Tensor):
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return packed

        with torch.autocast("cpu", dtype=torch.bfloat16), fused.recompute_kept_outputs(recompute):
            with torch.autograd.graph.saved_tensors_hooks(pack, fused._unpack):
                model(input_ids=ids).logits.float().sum()
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        kept.append(sum(v for k, v in seen.items() if k not in params))
    tokens = ids.numel()
    # 2 layers: the activation output (tokens x 192) and the input norm's output (tokens x 64), bf16
    assert kept[0] - kept[1] >= 2 * tokens * (192 + 64) * 2, kept
