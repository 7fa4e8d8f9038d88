"""The torch dequantization kernels equal gguf.quants.dequantize bit for bit (fp32)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import quants as gq

from fixtures.ollama_store import gemma_gguf_path

from llamaforge_tui.core.gguf import quants
from llamaforge_tui.core.errors import GgufError

Q = GGMLQuantizationType

_FP16_FIELDS = quants.SCALE_OFFSETS


def random_blocks(qtype: GGMLQuantizationType, n_blocks: int, seed: int = 0) -> np.ndarray:
    """Random but valid blocks: random bytes everywhere, with finite fp16 scales (incl. negatives, subnormals)."""
    rng = np.random.default_rng(seed)
    _, type_size = GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for offset in _FP16_FIELDS[qtype]:
        scale = rng.standard_normal(n_blocks).astype(np.float32) * rng.choice([1e-6, 1e-3, 0.1, 10.0], n_blocks)
        blocks[:, offset : offset + 2] = scale.astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
    return blocks


def assert_bit_equal(ours: torch.Tensor, ref: np.ndarray) -> None:
    assert ours.dtype == torch.float32
    got = ours.cpu().numpy()
    assert got.shape == ref.shape
    assert np.array_equal(got.view(np.uint32), np.ascontiguousarray(ref, dtype=np.float32).view(np.uint32))


def test_supported_types_cover_the_issue_list() -> None:
    names = {t.name for t in quants.SUPPORTED_TYPES}
    assert names == {"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"}


@pytest.mark.parametrize("qtype", sorted(quants.BLOCK_TYPES, key=int), ids=lambda t: t.name)
def test_random_blocks_bit_exact(qtype: GGMLQuantizationType) -> None:
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    rows, blocks_per_row = 37, 3
    raw = random_blocks(qtype, rows * blocks_per_row, seed=int(qtype)).reshape(rows, blocks_per_row * type_size)
    ref = gq.dequantize(raw, qtype)
    ours = quants.dequantize(torch.from_numpy(raw), qtype, (rows, blocks_per_row * block_size))
    assert_bit_equal(ours, ref)
    # Any subset of rows dequantizes on its own (embedding gathers, output-head chunks).
    idx = torch.tensor([5, 0, 36, 5])
    sub = quants.dequantize_rows(torch.from_numpy(raw)[idx], qtype, blocks_per_row * block_size)
    assert_bit_equal(sub, ref[idx.numpy()])


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q8_0], ids=lambda t: t.name)
def test_chunked_path_is_bit_exact_and_casts(qtype: GGMLQuantizationType, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tensors larger than one work chunk go through the preallocated, chunked path."""
    monkeypatch.setattr(quants, "_CHUNK_ELEMENTS", 1024)
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    raw = random_blocks(qtype, 64, seed=7)
    shape = (64 * block_size // 512, 512)
    ref = gq.dequantize(raw.reshape(shape[0], -1), qtype)
    assert_bit_equal(quants.dequantize(torch.from_numpy(raw), qtype, shape), ref)
    half = quants.dequantize(torch.from_numpy(raw), qtype, shape, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    assert torch.equal(half, torch.from_numpy(ref).to(torch.bfloat16))


def test_float_types_bit_exact() -> None:
    rng = np.random.default_rng(1)
    values = rng.standard_normal((6, 8)).astype(np.float32)
    # F32 from raw bytes and typed
    assert_bit_equal(quants.dequantize(torch.from_numpy(values.view(np.uint8).copy()), Q.F32, (6, 8)), values)
    assert_bit_equal(quants.dequantize(torch.from_numpy(values), Q.F32, (6, 8)), values)
    # F16
    h = values.astype(np.float16)
    assert_bit_equal(quants.dequantize(torch.from_numpy(h), Q.F16, (6, 8)), gq.dequantize(h.view(np.uint8), Q.F16))
    # BF16 given as uint16 (what GgufFile.tensor_array returns) and as raw bytes
    bf = (values.view(np.uint32) >> 16).astype(np.uint16)
    ref = gq.dequantize(bf.view(np.uint8), Q.BF16)
    assert_bit_equal(quants.dequantize(torch.from_numpy(bf.astype(np.int16)), Q.BF16, (6, 8)), ref)
    assert_bit_equal(quants.dequantize(torch.from_numpy(bf.view(np.uint8)), Q.BF16, (6, 8)), ref)
    assert quants.dequantize(torch.from_numpy(values), Q.F32, (6, 8), dtype=torch.float16).dtype == torch.float16


def test_unsupported_type_names_itself() -> None:
    with pytest.raises(GgufError, match="IQ2_XXS is not supported"):
        quants.dequantize(torch.zeros(66, dtype=torch.uint8), Q.IQ2_XXS, (256,))
    with pytest.raises(GgufError, match="TQ1_0"):
        quants.quant_type("tq1_0")
    with pytest.raises(GgufError, match="not a known GGML type"):
        quants.quant_type(9999)


def test_size_mismatches_are_clear_errors() -> None:
    with pytest.raises(GgufError, match="needs 36 bytes, got 35"):
        quants.dequantize(torch.zeros(35, dtype=torch.uint8), Q.Q4_0, (64,))
    with pytest.raises(GgufError, match="not a multiple of the Q4_K block size"):
        quants.dequantize(torch.zeros(144, dtype=torch.uint8), Q.Q4_K, (2, 128))
    with pytest.raises(GgufError, match="take 36 bytes, got 18"):
        quants.dequantize_rows(torch.zeros((2, 18), dtype=torch.uint8), Q.Q4_0, 64)
    assert quants.row_nbytes(Q.Q6_K, 512) == 420


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("qtype", sorted(quants.BLOCK_TYPES, key=int), ids=lambda t: t.name)
def test_cuda_bit_exact(qtype: GGMLQuantizationType) -> None:
    block_size, _ = GGML_QUANT_SIZES[qtype]
    raw = random_blocks(qtype, 4096, seed=3).reshape(64, -1)
    ref = gq.dequantize(raw, qtype)
    ours = quants.dequantize(torch.from_numpy(raw).cuda(), qtype, (64, 64 * block_size))
    assert ours.is_cuda
    assert_bit_equal(ours, ref)


@pytest.mark.slow
def test_real_gemma_every_tensor_bit_exact() -> None:
    from llamaforge_tui.core.gguf.file import GgufFile

    seen: set[str] = set()
    with GgufFile(gemma_gguf_path()) as gf:
        assert len(gf.tensors) > 200
        for info in gf.tensors:
            data = gf.tensor_bytes(info)
            ref = gq.dequantize(data.reshape(*info.shape[:-1], -1), info.ggml_type).reshape(info.shape)
            ours = quants.dequantize(torch.from_numpy(np.array(data)), info.ggml_type, info.shape)
            assert_bit_equal(ours, ref)
            seen.add(info.ggml_type.name)
    assert {"Q8_0", "Q5_0", "Q4_K", "Q6_K", "F32"} <= seen
