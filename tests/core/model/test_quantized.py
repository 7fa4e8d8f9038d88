"""Training on quantized GGUF weights: exact modules, exact model logits, memory ceiling, and learning parity.

These tests build their own tiny GGUFs (tensor names = HF names, so they do not depend on the loader's name
tables), quantized with gguf.quants; llama's q/k rotary permutation is applied on write and undone on load, to
prove the raw-row permutation is exact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFWriter
from gguf import quants as gq

from llamaforge_tui.core.gguf import quants
from llamaforge_tui.core.errors import GgufError
from llamaforge_tui.core.gguf.file import GgufFile
from llamaforge_tui.core.model.qlora import fill_quantized_model, row_permutation
from llamaforge_tui.core.model.quantized import QuantEmbedding, QuantLinear, base_weight_bytes, logical_parameter_count

Q = GGMLQuantizationType
QUANTIZABLE = [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0]  # the types gguf.quants can write


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's converter permutation (HF -> GGUF) of q/k rows."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _unpermute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def tiny_llama(seed: int = 0) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg).eval()


def tiny_gemma3(seed: int = 0) -> torch.nn.Module:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    cfg = Gemma3TextConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, max_position_embeddings=64, sliding_window=16,
        tie_word_embeddings=True,
    )
    model = Gemma3ForCausalLM(cfg).eval()
    with torch.no_grad():  # non-trivial norms
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.2)
    return model


def write_gguf(model: torch.nn.Module, path: Path, qtype: GGMLQuantizationType) -> None:
    """Every 2-D weight quantized to ``qtype`` (q/k permuted for llama), 1-D tensors as F32; tied head omitted."""
    cfg = model.config
    writer = GGUFWriter(path, "llama")
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        w = p.detach().float().numpy()
        if w.ndim == 2:
            if cfg.model_type == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
                heads = cfg.num_attention_heads if "q_proj" in name else cfg.num_key_value_heads
                w = _permute(w, heads)
            writer.add_tensor(name, gq.quantize(w, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(name, w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def transform_for(model: torch.nn.Module):  # noqa: ANN201
    cfg = model.config

    def transform(hf_name: str, t: torch.Tensor) -> torch.Tensor:
        if cfg.model_type == "llama" and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = cfg.num_attention_heads if "q_proj" in hf_name else cfg.num_key_value_heads
            return _unpermute(t, heads)
        return t

    return transform


def dequantized_reference(model: torch.nn.Module, qtype: GGMLQuantizationType) -> torch.nn.Module:
    """The same model with every 2-D weight replaced by dequant(quant(W)): what the `gguf` path would load."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                w = p.detach().float().numpy()
                p.copy_(torch.from_numpy(gq.dequantize(gq.quantize(w, qtype), qtype)))
    return model


def build_pair(factory, qtype: GGMLQuantizationType, tmp_path: Path):  # noqa: ANN001, ANN201
    """(quantized model, dequantized reference model, fill report) for a tiny architecture."""
    source = factory()
    path = tmp_path / f"tiny-{qtype.name}.gguf"
    write_gguf(source, path, qtype)
    with torch.device("meta"):
        skeleton = factory()
    with GgufFile(path) as gf:
        fill = fill_quantized_model(skeleton, gf, lambda n: n, transform_for(source))
    return skeleton, dequantized_reference(factory(), qtype), fill, path


# ----------------------------------------------------------------------------------------------- modules


@pytest.mark.parametrize("qtype", sorted(quants.BLOCK_TYPES, key=int), ids=lambda t: t.name)
def test_quant_linear_matches_dense_linear_forward_and_input_grad(qtype: GGMLQuantizationType) -> None:
    from tests.core.gguf.test_quants import random_blocks

    block_size, type_size = quants.block_layout(qtype)
    in_features = 2 * block_size
    raw = torch.from_numpy(random_blocks(qtype, 48 * 2, seed=1).reshape(48, -1))
    dense = quants.dequantize_rows(raw, qtype, in_features)
    # a chunk size that forces 5 chunks (10 rows each, the last one short)
    layer = QuantLinear(raw, qtype, in_features, chunk_elements=10 * in_features)
    x = torch.randn(3, 4, in_features, dtype=torch.float32, requires_grad=True)
    y = layer(x)
    ref = torch.nn.functional.linear(x, dense)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-4 * float(ref.detach().abs().max()))
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    (gref,) = torch.autograd.grad(ref, x, g)
    torch.testing.assert_close(gx, gref, rtol=1e-5, atol=1e-4 * float(gref.abs().max()))
    assert layer.weight is None and not layer.qweight.requires_grad
    assert list(layer.parameters()) == []  # nothing trainable, nothing dense


def test_quant_linear_saves_no_dequantized_tensor_for_backward() -> None:
    raw = torch.from_numpy(gq.quantize(np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32), Q.Q8_0))
    layer = QuantLinear(raw, Q.Q8_0, 64)
    x = torch.randn(5, 64, requires_grad=True)
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        layer(x).sum().backward()
    assert len(saved) == 1 and saved[0].dtype == torch.uint8  # only the resident raw bytes
    assert x.grad is not None


def test_quant_embedding_dequantizes_gathered_rows_exactly() -> None:
    w = np.random.default_rng(2).standard_normal((50, 64)).astype(np.float32)
    raw = gq.quantize(w, Q.Q5_1)
    emb = QuantEmbedding(torch.from_numpy(raw), Q.Q5_1, 64, embed_scale=8.0)
    ids = torch.tensor([[3, 3, 49], [0, 7, 3]])
    table = torch.from_numpy(gq.dequantize(raw, Q.Q5_1))
    assert torch.equal(emb(ids), table[ids] * torch.tensor(8.0))
    with pytest.raises(GgufError, match="must be uint8"):
        QuantEmbedding(torch.from_numpy(raw)[:, :-2], Q.Q5_1, 64)


def test_row_permutation_probe() -> None:
    perm = row_permutation(lambda _n, t: _unpermute(t, 4), "q_proj.weight", (16, 8))
    assert perm is not None and sorted(perm.tolist()) == list(range(16))
    assert row_permutation(lambda _n, t: t, "x.weight", (16, 8)) is None
    with pytest.raises(ValueError):
        row_permutation(lambda _n, t: t + 1, "norm.weight", (16, 8))


# ----------------------------------------------------------------------------------------------- whole models


@pytest.mark.parametrize(
    ("factory", "qtype"),
    [(tiny_llama, Q.Q4_0), (tiny_llama, Q.Q8_0), (tiny_gemma3, Q.Q5_0), (tiny_gemma3, Q.Q4_1)],
    ids=["llama-Q4_0", "llama-Q8_0", "gemma3-Q5_0", "gemma3-Q4_1"],
)
def test_tiny_model_logits_match_dequantized_path(factory, qtype: GGMLQuantizationType, tmp_path: Path) -> None:  # noqa: ANN001
    model, reference, fill, path = build_pair(factory, qtype, tmp_path)
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = model(ids).logits
        want = reference(ids).logits
    assert (got - want).abs().max().item() <= 1e-4
    assert all(isinstance(m, (QuantLinear, QuantEmbedding)) for n, m in model.named_modules() if n in fill.quantized)
    assert isinstance(model.get_input_embeddings(), QuantEmbedding)
    assert isinstance(model.get_output_embeddings(), QuantLinear)
    if model.config.tie_word_embeddings:
        assert fill.tied_output
        assert model.get_output_embeddings().qweight is model.get_input_embeddings().qweight
    # memory: the frozen base is the GGUF's bytes, nothing dense on the side
    assert fill.base_bytes <= 1.15 * fill.gguf_tensor_bytes
    assert base_weight_bytes(model) == fill.base_bytes
    assert logical_parameter_count(model) == sum(p.numel() for p in reference.parameters())
    assert not any(p.requires_grad for p in model.parameters())


def test_missing_tensor_is_a_clear_error(tmp_path: Path) -> None:
    source = tiny_llama()
    path = tmp_path / "tiny.gguf"
    write_gguf(source, path, Q.Q8_0)
    with torch.device("meta"):
        skeleton = tiny_llama()
    with GgufFile(path) as gf, pytest.raises(GgufError, match="no tensor for 1 model parameters"):
        fill_quantized_model(skeleton, gf, lambda n: None if n == "model.norm.weight" else n, transform_for(source))


def _memorize(model: torch.nn.Module, steps: int, device: str = "cpu") -> tuple[float, float]:
    """LoRA through peft on q/k/v/o + MLP; returns (first loss, last loss) on a fixed memorization batch."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    peft_model = get_peft_model(
        model,
        LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    peft_model.train()
    ids = torch.randint(0, model.config.vocab_size, (4, 16), generator=torch.Generator().manual_seed(1)).to(device)
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(steps):
        loss = peft_model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses[0], losses[-1]


@pytest.mark.parametrize("factory", [tiny_llama, tiny_gemma3], ids=["llama", "gemma3"])
def test_lora_learns_as_well_as_on_the_dequantized_path(factory, tmp_path: Path) -> None:  # noqa: ANN001
    from peft.tuners.lora import Linear as LoraLinear

    model, reference, _, _ = build_pair(factory, Q.Q4_0, tmp_path)
    q_first, q_last = _memorize(model, 15)
    d_first, d_last = _memorize(reference, 15)
    assert abs(q_first - d_first) < 1e-3
    q_drop, d_drop = q_first - q_last, d_first - d_last
    assert d_drop > 0.5  # the task is learnable
    assert abs(q_drop - d_drop) <= 0.10 * d_drop
    wrapped = [m for m in model.modules() if isinstance(m, LoraLinear)]
    assert wrapped and all(isinstance(m.base_layer, QuantLinear) for m in wrapped)


@pytest.mark.parametrize("softcap", [None, 30.0])
def test_quantized_head_loss_matches_the_trainers_dense_head_loss(softcap, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    from llamaforge_tui.core.model import quantized
    from llamaforge_tui.core.train.loss import head_cross_entropy

    monkeypatch.setattr(quantized, "HEAD_CHUNK_BYTES", 4 * 9 * 40)  # 40 vocab rows per chunk: 8 chunks
    rng = np.random.default_rng(3)
    raw = gq.quantize(rng.standard_normal((300, 64)).astype(np.float32), Q.Q8_0)
    head = QuantLinear(torch.from_numpy(raw), Q.Q8_0, 64)
    dense = head.dequantized_weight()
    hidden = torch.randn(9, 64, requires_grad=True)
    targets = torch.tensor([0, 299, 40, 39, 41, 150, 7, 7, 200])
    got = head.cross_entropy_sum(hidden, targets, softcap=softcap)
    want = head_cross_entropy(hidden, dense, targets, softcap=softcap)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    (g_got,) = torch.autograd.grad(got * 0.5, hidden)
    (g_want,) = torch.autograd.grad(want * 0.5, hidden)
    torch.testing.assert_close(g_got, g_want, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_logits_training_and_head_loss(tmp_path: Path) -> None:
    model, reference, _, _ = build_pair(tiny_gemma3, Q.Q5_0, tmp_path)
    model.cuda()
    reference.cuda()
    assert model.get_input_embeddings().qweight.is_cuda
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0)).cuda()
    with torch.no_grad():
        assert (model(ids).logits - reference(ids).logits).abs().max().item() <= 1e-4
    q_first, q_last = _memorize(model, 15, "cuda")
    d_first, d_last = _memorize(reference, 15, "cuda")
    assert abs((q_first - q_last) - (d_first - d_last)) <= 0.10 * (d_first - d_last)
    head = model.get_output_embeddings()
    head = getattr(head, "base_layer", head)
    hidden = torch.randn(7, 64, device="cuda")
    targets = torch.randint(0, 128, (7,), device="cuda")
    dense = torch.nn.functional.cross_entropy(hidden @ head.dequantized_weight().t(), targets, reduction="sum")
    torch.testing.assert_close(head.cross_entropy_sum(hidden, targets), dense, rtol=1e-5, atol=1e-4)


def test_quant_linear_under_autocast_runs_in_the_autocast_dtype() -> None:
    raw = torch.from_numpy(gq.quantize(np.random.default_rng(4).standard_normal((32, 64)).astype(np.float32), Q.Q8_0))
    layer = QuantLinear(raw, Q.Q8_0, 64)
    x = torch.randn(3, 64, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
        ref = torch.nn.functional.linear(x, layer.dequantized_weight())
    assert y.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(y, ref)
    y.float().sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.float32
