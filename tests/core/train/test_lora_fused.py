"""core/train/lora_fused.py: the gated MLP with LoRA as one autograd function gives peft's outputs and
gradients (exactly in fp32, within peft's own rounding under bf16 autocast), keeps less for backward, and
steps aside wherever the LoRA is not the plain case."""

from __future__ import annotations

import copy
import threading
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import Gemma3TextConfig, LlamaConfig
from transformers.models.gemma3.modeling_gemma3 import Gemma3MLP
from transformers.models.llama.modeling_llama import LlamaMLP

from llamaforge_tui.core.train import compile as compile_mod
from llamaforge_tui.core.train import fused, lora_fused


class _Box(torch.nn.Module):
    def __init__(self, mlp: torch.nn.Module) -> None:
        super().__init__()
        self.mlp = mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


def _model(kind: str = "gemma", dtype: torch.dtype = torch.float32, dropout: float = 0.0,
           targets: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj")) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "gemma":
        mlp = Gemma3MLP(Gemma3TextConfig(hidden_size=32, intermediate_size=96, hidden_activation="gelu_pytorch_tanh"))
    else:
        mlp = LlamaMLP(LlamaConfig(hidden_size=32, intermediate_size=96, hidden_act="silu"))
    box = _Box(mlp).to(dtype)
    fused.fuse_modules(box, "on")
    torch.manual_seed(1)
    model = get_peft_model(box, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=list(targets)))
    with torch.no_grad():  # LoRA B starts at zero: give it values so every gradient flows
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
            if "lora_" in name:
                p.data = p.data.float()  # the trainer keeps LoRA weights in fp32
    return model


def _grads(model: torch.nn.Module, forward: object, x: torch.Tensor, autocast: bool = False) -> tuple:
    model.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = forward(x)
    torch.manual_seed(5)
    out.float().backward(torch.randn(out.shape))
    return out.detach().double(), x.grad.double(), {
        n: p.grad.double() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("kind", ["gemma", "llama"])
def test_in_fp32_it_is_peft_s_arithmetic(kind: str) -> None:
    model = _model(kind)
    assert lora_fused.fuse_lora_mlps(model) == 1
    mlp = model.get_base_model().mlp
    assert mlp.forward == mlp._lf_lora
    x = torch.randn(3, 7, 32)
    ref = _grads(model, mlp._lf_unfused, x)
    got = _grads(model, mlp, x)
    assert torch.allclose(got[0], ref[0], rtol=1e-6, atol=1e-6)
    assert torch.allclose(got[1], ref[1], rtol=1e-5, atol=1e-6)
    assert set(got[2]) == set(ref[2]) and len(got[2]) == 6
    for name in ref[2]:
        assert torch.allclose(got[2][name], ref[2][name], rtol=1e-5, atol=1e-6), name


def test_under_bf16_autocast_its_error_is_peft_s() -> None:
    """bf16 base, fp32 LoRA, bf16 autocast (how training runs): against the same maths in fp64, the fused
    function's error is within peft's own (the rounding of bf16 matmuls), for the output and every gradient."""
    model = _model("gemma", torch.bfloat16)
    lora_fused.fuse_lora_mlps(model)
    mlp = model.get_base_model().mlp
    x = torch.randn(4, 33, 32).bfloat16()
    peft_path = _grads(model, mlp._lf_unfused, x, autocast=True)
    fused_path = _grads(model, mlp, x, autocast=True)
    exact = copy.deepcopy(model).double()
    exact_mlp = exact.get_base_model().mlp
    ref = _grads(exact, exact_mlp._lf_unfused, x.double())

    def err(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).abs().max() / b.abs().max())

    assert err(fused_path[0], ref[0]) <= 2 * err(peft_path[0], ref[0]) + 1e-3
    assert err(fused_path[1], ref[1]) <= 2 * err(peft_path[1], ref[1]) + 1e-3
    for name in ref[2]:
        assert err(fused_path[2][name], ref[2][name]) <= 2 * err(peft_path[2][name], ref[2][name]) + 1e-3, name
        assert err(fused_path[2][name], ref[2][name]) < 0.02, name


def _saved(forward: object, x: torch.Tensor, params: set[int]) -> int:
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward(x).sum()
    return sum(v for k, v in seen.items() if k not in params)


def test_it_keeps_one_intermediate_tensor_less() -> None:
    model = _model("gemma", torch.bfloat16)
    lora_fused.fuse_lora_mlps(model)
    mlp = model.get_base_model().mlp
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    x = torch.randn(2, 50, 32).bfloat16().requires_grad_()
    peft_kept, fused_kept = _saved(mlp._lf_unfused, x, params), _saved(mlp, x, params)
    intermediate = 2 * 50 * 96 * 2  # act(gate) * up, bf16
    assert fused_kept <= peft_kept - intermediate, (fused_kept, peft_kept)


def test_gate_and_up_share_one_buffer_and_a_copy_keeps_its_own() -> None:
    model = _model("llama")
    mlp = model.get_base_model().mlp
    before = [mlp.gate_proj.base_layer.weight.clone(), mlp.up_proj.base_layer.weight.clone()]
    lora_fused.fuse_lora_mlps(model)
    gate_w, up_w = mlp.gate_proj.base_layer.weight, mlp.up_proj.base_layer.weight
    assert torch.equal(gate_w, before[0]) and torch.equal(up_w, before[1])
    assert gate_w.untyped_storage().data_ptr() == up_w.untyped_storage().data_ptr()
    joined = lora_fused._joined(gate_w, up_w)
    assert joined.data_ptr() == gate_w.data_ptr() and torch.equal(joined, torch.cat(before))
    twin = copy.deepcopy(model)
    twin_mlp = twin.get_base_model().mlp
    with torch.no_grad():
        twin_mlp.up_proj.base_layer.weight.add_(1.0)
    x = torch.randn(2, 3, 32, requires_grad=True)
    assert twin_mlp.forward.__self__ is twin_mlp
    assert not torch.allclose(twin_mlp(x), mlp(x))
    # weights moved apart (as .to() on one of them would): the fused form still computes the right thing
    with torch.no_grad():
        mlp.up_proj.base_layer.weight = torch.nn.Parameter(up_w.detach().clone(), requires_grad=False)
    assert torch.allclose(mlp(x), mlp._lf_unfused(x), atol=1e-6)


def test_it_steps_aside_where_the_lora_is_not_plain() -> None:
    x = torch.randn(2, 5, 32)
    assert lora_fused.fuse_lora_mlps(_model(dropout=0.1)) == 0
    assert lora_fused.fuse_lora_mlps(_model(targets=("gate_proj", "up_proj"))) == 0
    unfused_box = _model()  # never given the fused activation form: left alone
    base_mlp = unfused_box.get_base_model().mlp
    base_mlp.__dict__.pop("_lf_fused")
    assert lora_fused.fuse_lora_mlps(unfused_box) == 0

    model = _model()
    lora_fused.fuse_lora_mlps(model)
    mlp = model.get_base_model().mlp
    called: list[int] = []
    real = lora_fused._function

    def spy() -> object:
        called.append(1)
        return real()

    lora_fused._function = spy
    try:
        with model.disable_adapter():  # a base-model comparison: no LoRA at all
            base_out = mlp(x)
        assert not called
        with torch.no_grad():
            assert torch.equal(mlp(x), mlp._lf_unfused(x))  # inference: the unfused path
        assert not called
        mlp(x.requires_grad_())
        assert called
    finally:
        lora_fused._function = real
    with torch.no_grad():
        lora_scale = mlp.gate_proj.scaling["default"]
        assert lora_scale > 0
        ref = mlp.down_proj.base_layer(torch.nn.functional.gelu(mlp.gate_proj.base_layer(x), approximate="tanh")
                                       * mlp.up_proj.base_layer(x))
    assert torch.allclose(base_out, ref, atol=1e-6)


def test_compiled_layers_take_the_unfused_forms_and_get_it_back(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.core.train.test_fused import _tiny_gemma

    model = _tiny_gemma()
    fused.fuse_modules(model, "on")
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["gate_proj", "up_proj",
                                                                                  "down_proj"]))
    assert lora_fused.fuse_lora_mlps(model) == 2
    layer = compile_mod.decoder_layers(model)[0]
    monkeypatch.setattr(compile_mod, "compiler_usable", lambda _d: (True, ""))
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **_k: None)
    compile_mod.compile_layers(model, "on", "cpu")
    assert "forward" not in layer.mlp.__dict__
    compile_mod.uncompile_layers(model)
    assert layer.mlp.forward == layer.mlp._lf_lora


def test_a_run_says_so_and_trains_as_peft_does(tmp_path: Path) -> None:
    """Through the trainer, in fp32: the log names the fused LoRA MLPs, and the losses equal the run's with the
    fused forms off."""
    from tests.core.train.test_fused import fused_runs

    runs = fused_runs(tmp_path, "fused LoRA MLPs", steps=6)
    assert runs["off"][1] == []
    assert runs["on"][1] and runs["on"][1][0].startswith("fused LoRA MLPs: 2 ")
    assert runs["on"][0] == pytest.approx(runs["off"][0], rel=1e-5)
    assert runs["on"][0][-1] < runs["on"][0][0]
