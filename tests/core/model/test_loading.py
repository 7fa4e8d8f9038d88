"""Loading GGUF weights into transformers models: exact for every architecture and quantization type.

Fixtures come from llama.cpp's own converter and quantizer (tests/fixtures/tiny_models.py), so the inverse
transforms are checked against the real forward ones: an F32 GGUF must give back the original HF weights bit for
bit, and quantized files must match transformers' own GGUF loader (gguf-py's numpy dequantization).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

from fixtures.gguf_factory import TinySpec, corrupt_copy, write_gguf
from fixtures.tiny_models import ARCHES, session_factory
from llamaforge_tui.core.gguf import arch as archmod
from llamaforge_tui.core.gguf import tensor_names
from llamaforge_tui.core.errors import GgufError, LlamaForgeError
from llamaforge_tui.core.gguf.file import GgufFile
from llamaforge_tui.core.model.loading import load_model, pick_device, pick_dtype
from llamaforge_tui.core.settings import Settings

PROMPT = "The quick brown fox jumps over the lazy dog. naïve café 123"
QUANT_TYPES = ("F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K")


@pytest.fixture(scope="module")
def factory():  # noqa: ANN201
    f = session_factory()
    f.ensure([(a, "F32") for a in ARCHES] + [("llama", q) for q in QUANT_TYPES] + [(a, "Q4_K_M") for a in ARCHES])
    return f


def _hf_model(path: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits.float()


@pytest.mark.parametrize("arch", ARCHES)
def test_f32_gguf_gives_back_the_original_weights(factory, arch: str) -> None:  # noqa: ANN001
    """Undoing llama.cpp's converter (names, q/k permutation, Gemma norm +1, tied head, fused phi3) is exact."""
    loaded = load_model(str(factory.gguf(arch, "F32")), Settings(), dtype="float32", device="cpu")
    ref = _hf_model(factory.hf_dir(arch))
    ours, theirs = loaded.model.state_dict(), ref.state_dict()
    assert set(ours) == set(theirs)
    different = [k for k in theirs if not torch.equal(ours[k], theirs[k])]
    if archmod.arch_spec(arch).norm_offset:
        # the converter stored fp32(w + 1); subtracting 1 again is exact, but w + 1 already rounded w to the
        # spacing of floats near 1 (2**-23): that is all the difference there may be, and only in norms
        assert all(k.endswith("norm.weight") for k in different), different[:5]
        assert all((ours[k] - theirs[k]).abs().max().item() <= 2**-23 for k in different)
    else:
        assert not different, different[:5]
    assert loaded.model.config.tie_word_embeddings == ref.config.tie_word_embeddings
    ids = loaded.tokenizer(PROMPT, return_tensors="pt").input_ids
    assert (_logits(loaded.model, ids) - _logits(ref, ids)).abs().max().item() <= 1e-4
    desc = loaded.description
    assert desc.architecture == arch and desc.kind == "gguf" and desc.gguf_file_type == "F32"
    assert desc.parameter_count == sum(p.numel() for p in ref.parameters())
    assert not any(p.device.type == "meta" for p in loaded.model.parameters())


def _transformers_gguf(path: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()


@pytest.mark.parametrize("qtype", QUANT_TYPES)
def test_quantized_llama_matches_transformers_gguf_loader(factory, qtype: str) -> None:  # noqa: ANN001
    path = factory.gguf("llama", qtype)
    loaded = load_model(str(path), Settings(), dtype="float32", device="cpu")
    ref = _transformers_gguf(path)
    ours, theirs = loaded.model.state_dict(), ref.state_dict()
    different = [k for k in theirs if not torch.equal(ours[k], theirs[k])]
    assert not different, different[:5]
    ids = loaded.tokenizer(PROMPT, return_tensors="pt").input_ids
    assert (_logits(loaded.model, ids) - _logits(ref, ids)).abs().max().item() <= 1e-4


def test_fixture_files_cover_the_quant_types(factory) -> None:  # noqa: ANN001
    """The quantized fixtures really contain the block types they are named after."""
    seen = set()
    for qtype in QUANT_TYPES:
        with GgufFile(factory.gguf("llama", qtype)) as gguf:
            seen |= {t.ggml_type for t in gguf.tensors}
    want = {Q.F32, Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K}
    assert want <= seen, want - seen


@pytest.mark.parametrize("arch", ARCHES)
def test_q4_k_m_every_arch_matches_dequantized_reference(factory, arch: str) -> None:  # noqa: ANN001
    """Quantized files of every arch: our weights equal gguf-py's numpy dequantization, un-transformed."""
    import gguf as gguf_py

    path = factory.gguf(arch, "Q4_K_M")
    loaded = load_model(str(path), Settings(), dtype="float32", device="cpu")
    params = dict(loaded.model.named_parameters())
    config = loaded.model.config
    with GgufFile(path) as g:
        kinds = {t.ggml_type for t in g.tensors}
        assert kinds & {Q.Q4_K, Q.Q6_K, Q.Q5_0, Q.Q8_0, Q.Q4_0}, kinds
        for info in g.tensors:
            ref = gguf_py.quants.dequantize(np.asarray(g.tensor_array(info)), info.ggml_type)
            name, value = tensor_names.gguf_tensor_to_hf(arch, info.name, torch.from_numpy(np.array(ref)), config)
            assert name is not None
            assert torch.equal(params[name].detach(), value.float()), name


def test_bf16_load_casts_after_exact_dequantization(factory) -> None:  # noqa: ANN001
    path = factory.gguf("gemma3", "Q4_K_M")
    f32 = load_model(str(path), Settings(), dtype="float32", device="cpu").model.state_dict()
    bf16 = load_model(str(path), Settings(), dtype="bfloat16", device="cpu").model.state_dict()
    for name, value in f32.items():
        assert bf16[name].dtype == torch.bfloat16
        assert torch.equal(bf16[name], value.to(torch.bfloat16)), name


def test_hf_weights_from_a_model_folder(factory) -> None:  # noqa: ANN001
    hf_dir = factory.hf_dir("qwen3")
    loaded = load_model(str(hf_dir), Settings(), dtype="float32", device="cpu")
    assert loaded.description.weights == "hf" and loaded.description.kind == "hf_dir"
    assert loaded.description.architecture == "qwen3" and loaded.chat_template
    ref = _hf_model(hf_dir)
    ids = loaded.tokenizer(PROMPT, return_tensors="pt").input_ids
    assert torch.equal(_logits(loaded.model, ids), _logits(ref, ids))


def test_unsupported_architecture_fails_before_loading(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "falcon.gguf", "falcon", spec=TinySpec())
    with pytest.raises(GgufError, match="architecture 'falcon' is not supported yet"):
        load_model(str(path), Settings(), dtype="float32", device="cpu")


def test_unsupported_quant_type_is_named(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "iq.gguf", "llama", weight_type=Q.IQ4_NL)
    with pytest.raises(GgufError, match="IQ4_NL not supported"):
        load_model(str(path), Settings(), dtype="float32", device="cpu")


def test_truncated_file_is_a_clear_error(factory, tmp_path: Path) -> None:  # noqa: ANN001
    src = factory.gguf("llama", "Q8_0")
    cut = corrupt_copy(src, tmp_path / "cut.gguf", keep_bytes=src.stat().st_size - 1000)
    with pytest.raises(GgufError, match="truncated"):
        load_model(str(cut), Settings(), dtype="float32", device="cpu")


def test_unknown_tensor_is_refused(tmp_path: Path) -> None:
    from fixtures.gguf_factory import tiny_tensor_plan

    plan = list(tiny_tensor_plan(TinySpec())) + [("blk.0.mystery.weight", (256,), Q.F32)]
    path = write_gguf(tmp_path / "odd.gguf", "llama", tensors=plan)
    with pytest.raises(GgufError, match="blk.0.mystery.weight"):
        load_model(str(path), Settings(), dtype="float32", device="cpu")


def test_dtype_and_device_choice() -> None:
    cpu = torch.device("cpu")
    assert pick_dtype("auto", cpu) == torch.float32
    assert pick_dtype("bf16", cpu) == torch.bfloat16 and pick_dtype("float16", cpu) == torch.float16
    with pytest.raises(LlamaForgeError, match="unknown dtype"):
        pick_dtype("int3", cpu)
    assert pick_device("cpu") == cpu
    if not torch.cuda.is_available():
        assert pick_device("auto").type in ("cpu", "mps")
        with pytest.raises(LlamaForgeError, match="no CUDA GPU"):
            pick_device("cuda")
    else:
        assert pick_device("auto").type == "cuda"
        assert pick_dtype("auto", torch.device("cuda")) in (torch.bfloat16, torch.float16)


def test_name_maps_round_trip_for_every_arch(factory) -> None:  # noqa: ANN001
    """EXPORT relies on hf -> gguf being the exact inverse of gguf -> hf, values included."""
    for arch in ARCHES:
        with GgufFile(factory.gguf(arch, "F32")) as g:
            config = archmod.config_from_gguf(g)
            for info in g.tensors:
                hf_name = tensor_names.gguf_to_hf_name(arch, info.name)
                assert hf_name is not None, info.name
                assert tensor_names.hf_to_gguf_name(arch, hf_name) == info.name
                raw = torch.from_numpy(np.array(g.tensor_array(info), dtype=np.float32))
                back_name, back = tensor_names.hf_tensor_to_gguf(arch, *tensor_names.gguf_tensor_to_hf(arch, info.name, raw, config),
                                                            config)
                assert back_name == info.name and torch.equal(back, raw), info.name
            if config.tie_word_embeddings:
                assert tensor_names.hf_tensor_to_gguf(arch, "lm_head.weight", torch.zeros(1), config)[0] is None


def test_llama3_rope_scaling_from_rope_freqs(factory) -> None:  # noqa: ANN001
    """Llama 3.1/3.2 GGUFs carry their rope scaling as ``rope_freqs.weight`` (per-frequency divisors); applying them
    reproduces transformers' ``llama3`` rope exactly enough, where ignoring them (transformers' own GGUF loader
    does) changes the logits."""
    path = factory.gguf("llama31", "F32")
    with GgufFile(path) as g:
        assert g.has_tensor("rope_freqs.weight")
    loaded = load_model(str(path), Settings(), dtype="float32", device="cpu")
    ref = _hf_model(factory.hf_dir("llama31"))
    ids = loaded.tokenizer(PROMPT * 3, return_tensors="pt").input_ids
    ours, theirs = _logits(loaded.model, ids), _logits(ref, ids)
    assert (ours - theirs).abs().max().item() <= 1e-4
    plain = _transformers_gguf(path)
    assert (_logits(plain, ids) - theirs).abs().max().item() > 1e-3


def test_dequantized_cache_is_reused_exactly(factory, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    from llamaforge_tui.core.model import dequant_cache
    from llamaforge_tui.core.model import gguf_loader

    path = factory.gguf("gemma3", "Q4_K_M")  # tied head + norm offsets: the interesting case
    first = load_model(str(path), Settings(), dtype="bfloat16", device="cpu", cache=True)
    entries = dequant_cache.cache_usage()
    assert len(entries) == 1 and entries[0].dtype == "bfloat16" and entries[0].size_bytes > 1_000_000

    def no_gguf_read(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cache hit must not dequantize the GGUF")

    original = gguf_loader.load_gguf_weights
    monkeypatch.setattr(gguf_loader, "load_gguf_weights", no_gguf_read)
    second = load_model(str(path), Settings(), dtype="bfloat16", device="cpu", cache=True)
    a, b = first.model.state_dict(), second.model.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert second.model.lm_head.weight is second.model.model.embed_tokens.weight  # still tied
    ids = first.tokenizer(PROMPT, return_tensors="pt").input_ids
    assert torch.equal(_logits(first.model, ids), _logits(second.model, ids))
    # another dtype is another entry; clearing frees the bytes
    monkeypatch.setattr(gguf_loader, "load_gguf_weights", original)
    load_model(str(path), Settings(), dtype="float32", device="cpu", cache=True)
    assert len(dequant_cache.cache_usage()) == 2
    assert dequant_cache.clear() > 0 and dequant_cache.cache_usage() == []


def test_meta_skeleton_does_not_leak_into_other_threads() -> None:
    import threading

    from llamaforge_tui.core.model.gguf_loader import params_on_meta

    seen: list[str] = []
    started, release = threading.Event(), threading.Event()

    def other() -> None:
        started.wait(5)
        seen.append(torch.nn.Linear(2, 2).weight.device.type)
        release.set()

    worker = threading.Thread(target=other)
    worker.start()
    with params_on_meta():
        mine = torch.nn.Linear(2, 2)
        started.set()
        release.wait(5)
    worker.join()
    assert mine.weight.device.type == "meta" and seen == ["cpu"]
    assert torch.nn.Linear(2, 2).weight.device.type == "cpu"  # restored afterwards


def test_progress_and_cancel(factory) -> None:  # noqa: ANN001
    import threading

    path = factory.gguf("llama", "Q4_K_M")
    seen: list[tuple[int, int]] = []
    load_model(str(path), Settings(), dtype="float32", device="cpu", progress=lambda d, t: seen.append((d, t)))
    done = [d for d, _ in seen]
    assert done == sorted(done) and seen[-1][0] == seen[-1][1] > 0 and len(seen) > 5
    stop = threading.Event()

    def stop_midway(d: int, t: int) -> None:
        if d > t // 3:
            stop.set()

    with pytest.raises(LlamaForgeError, match="loading cancelled"):
        load_model(str(path), Settings(), dtype="float32", device="cpu", progress=stop_midway, stop_event=stop)
