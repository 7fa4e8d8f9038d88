"""GGUF dequantization in torch: vectorized over blocks, so the same code runs on CPU and CUDA.

Why not ``gguf.quants.dequantize``? It is numpy-only (no GPU), allocates the whole fp32 tensor plus several
temporaries of the same size, and we also need to dequantize *slices* (gathered embedding rows, chunks of an output
head) straight from torch buffers for on-the-fly training on quantized weights. Every kernel here follows the exact
operation order of the reference (``gguf/quants.py``, itself a port of ``ggml-quants.c``), so the fp32 results are
bit-identical: each product/sum is a separate IEEE op (no fused multiply-add), in the same order.

Layouts: a quantized row of ``row_len`` values is ``row_len / block_size`` blocks of ``type_size`` bytes each; blocks
never cross rows, so a tensor of numpy shape ``(..., row_len)`` is simply ``n_blocks`` consecutive blocks.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from llamaforge_tui.core.errors import GgufError

if TYPE_CHECKING:
    import torch

Q = GGMLQuantizationType
QK_K = 256
FLOAT_TYPES: frozenset[GGMLQuantizationType] = frozenset({Q.F32, Q.F16, Q.BF16})
BLOCK_TYPES: frozenset[GGMLQuantizationType] = frozenset(
    {Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K}
)
SUPPORTED_TYPES: frozenset[GGMLQuantizationType] = FLOAT_TYPES | BLOCK_TYPES

# Byte offsets of the fp16 fields (scales d, mins m/dmin) inside each block type: where random test blocks must
# hold finite values, and what a synthetic GGUF (benchmarks) fills with small scales.
SCALE_OFFSETS: dict[GGMLQuantizationType, tuple[int, ...]] = {
    Q.Q4_0: (0,), Q.Q4_1: (0, 2), Q.Q5_0: (0,), Q.Q5_1: (0, 2), Q.Q8_0: (0,),
    Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,),
}

# Work on at most this many output elements at a time, so temporaries stay small (~16 MiB of fp32 each)
# even for a 262k x 640 embedding; the loop is over chunks of thousands of blocks, never over single blocks.
_CHUNK_ELEMENTS = 1 << 22


def quant_type(qtype: GGMLQuantizationType | int | str) -> GGMLQuantizationType:
    """Normalise a type given as enum, ggml id or name, raising a user-facing error for unknown/unsupported ones."""
    try:
        if isinstance(qtype, str):
            qt = GGMLQuantizationType[qtype.upper()]
        else:
            qt = GGMLQuantizationType(int(qtype))
    except (KeyError, ValueError):
        raise GgufError(f"quantization type {qtype!r} is not a known GGML type") from None
    if qt not in SUPPORTED_TYPES:
        supported = ", ".join(sorted(t.name for t in SUPPORTED_TYPES))
        raise GgufError(f"quantization type {qt.name} is not supported (supported: {supported})")
    return qt


def block_layout(qtype: GGMLQuantizationType | int | str) -> tuple[int, int]:
    """(values per block, bytes per block) for a supported type."""
    qt = quant_type(qtype)
    return GGML_QUANT_SIZES[qt]


def row_nbytes(qtype: GGMLQuantizationType | int | str, row_len: int) -> int:
    """Bytes taken by one row of ``row_len`` values; raises GgufError if the row does not hold whole blocks."""
    qt = quant_type(qtype)
    block_size, type_size = GGML_QUANT_SIZES[qt]
    if row_len % block_size:
        raise GgufError(f"row length {row_len} is not a multiple of the {qt.name} block size {block_size}")
    return row_len // block_size * type_size


# --------------------------------------------------------------------------------------------- kernels
# Each kernel maps uint8 blocks (n, type_size) to float32 values (n, block_size).


def _f16(blocks: torch.Tensor, offset: int) -> torch.Tensor:
    """The fp16 field at byte ``offset`` of each block, as an (n, 1) fp32 column."""
    import torch

    return blocks[:, offset : offset + 2].contiguous().view(torch.float16).float()


_SHIFTS: dict[tuple[tuple[int, ...], tuple[int, ...], str], torch.Tensor] = {}


def _shifts(values: list[int], shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """A small constant tensor of shift amounts, cached per device: building it from a list on every call would be
    a blocking host-to-device copy on CUDA, stalling the GPU queue once per weight."""
    import torch

    key = (tuple(values), shape, str(like.device))
    cached = _SHIFTS.get(key)
    if cached is None:
        cached = _SHIFTS[key] = torch.tensor(values, dtype=torch.uint8, device=like.device).view(shape)
    return cached


def _nibbles(qs: torch.Tensor, groups: int, width: int) -> torch.Tensor:
    """Split (n, groups*width) bytes into (n, groups, 2, width): low nibbles first, then high nibbles."""
    n = qs.shape[0]
    return (qs.reshape(n, groups, 1, width) >> _shifts([0, 4], (1, 1, 2, 1), qs)).bitwise_and_(0x0F)


def _bits(packed: torch.Tensor, groups: int, width: int) -> torch.Tensor:
    """Unpack (n, groups*width) bytes into (n, groups, 8, width) single bits, bit 0 first."""
    n = packed.shape[0]
    return (packed.reshape(n, groups, 1, width) >> _shifts(list(range(8)), (1, 1, 8, 1), packed)).bitwise_and_(0x01)


def _crumbs(packed: torch.Tensor, groups: int, width: int) -> torch.Tensor:
    """Unpack (n, groups*width) bytes into (n, groups, 4, width) 2-bit fields, lowest bits first."""
    n = packed.shape[0]
    return (packed.reshape(n, groups, 1, width) >> _shifts([0, 2, 4, 6], (1, 1, 4, 1), packed)).bitwise_and_(0x03)


def _q4_0(b: torch.Tensor) -> torch.Tensor:
    d = _f16(b, 0)
    q = _nibbles(b[:, 2:18], 1, 16).reshape(b.shape[0], 32)
    return q.float().sub_(8.0).mul_(d)


def _q4_1(b: torch.Tensor) -> torch.Tensor:
    d, m = _f16(b, 0), _f16(b, 2)
    q = _nibbles(b[:, 4:20], 1, 16).reshape(b.shape[0], 32)
    return q.float().mul_(d).add_(m)


def _q5_high_bits(qh: torch.Tensor) -> torch.Tensor:
    """The 32 fifth bits of a Q5_0/Q5_1 block, stored as a little-endian uint32."""
    return _bits(qh, 4, 1).reshape(qh.shape[0], 4, 8).reshape(qh.shape[0], 32)


def _q5_0(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    d = _f16(b, 0)
    qh = _q5_high_bits(b[:, 2:6])
    ql = _nibbles(b[:, 6:22], 1, 16).reshape(n, 32)
    return ql.bitwise_or_(qh << 4).float().sub_(16.0).mul_(d)


def _q5_1(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    d, m = _f16(b, 0), _f16(b, 2)
    qh = _q5_high_bits(b[:, 4:8])
    ql = _nibbles(b[:, 8:24], 1, 16).reshape(n, 32)
    return ql.bitwise_or_(qh << 4).float().mul_(d).add_(m)


def _q8_0(b: torch.Tensor) -> torch.Tensor:
    import torch

    d = _f16(b, 0)
    return b[:, 2:34].view(torch.int8).float().mul_(d)


def _q2_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    scales = b[:, 0:16]
    d, dmin = _f16(b, 80), _f16(b, 82)
    dl = (d * (scales & 0x0F).float()).reshape(n, 16, 1)
    ml = (dmin * (scales >> 4).float()).reshape(n, 16, 1)
    q = _crumbs(b[:, 16:80], 2, 32).reshape(n, 16, 16).float()
    return q.mul_(dl).sub_(ml).reshape(n, QK_K)


def _q3_k(b: torch.Tensor) -> torch.Tensor:
    import torch

    n = b.shape[0]
    hmask, qs, scales = b[:, 0:32], b[:, 32:96], b[:, 96:108]
    d = _f16(b, 108)
    # 16 six-bit scales: low 4 bits in bytes 0-7 (low nibbles, then high nibbles), top 2 bits in bytes 8-11.
    low = ((scales[:, 0:8].reshape(n, 1, 8) >> _shifts([0, 4], (1, 2, 1), b)) & 0x0F).reshape(n, 16)
    high = ((scales[:, 8:12].reshape(n, 1, 4) >> _shifts([0, 2, 4, 6], (1, 4, 1), b)) & 0x03).reshape(n, 16)
    sc = (low | (high << 4)).to(torch.int16) - 32
    dl = (d * sc.float()).reshape(n, 16, 1)
    ql = _crumbs(qs, 2, 32).reshape(n, 16, 16).to(torch.int16)
    qh = (_bits(hmask, 1, 32).reshape(n, 16, 16) ^ 1).to(torch.int16)  # offset applies when the mask bit is 0
    q = ql.sub_(qh << 2).float()
    return q.mul_(dl).reshape(n, QK_K)


def _k_scale_min(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpack the 12-byte Q4_K/Q5_K field into 8 six-bit scales and 8 six-bit mins."""
    import torch

    s = scales.reshape(scales.shape[0], 3, 4)
    d, m, md = s[:, 0], s[:, 1], s[:, 2]
    sc = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=1)
    mn = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=1)
    return sc, mn


def _q4_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    d, dmin = _f16(b, 0), _f16(b, 2)
    sc, mn = _k_scale_min(b[:, 4:16])
    dl = (d * sc.float()).reshape(n, 8, 1)
    ml = (dmin * mn.float()).reshape(n, 8, 1)
    q = _nibbles(b[:, 16:144], 4, 32).reshape(n, 8, 32).float()
    return q.mul_(dl).sub_(ml).reshape(n, QK_K)


def _q5_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    d, dmin = _f16(b, 0), _f16(b, 2)
    sc, mn = _k_scale_min(b[:, 4:16])
    dl = (d * sc.float()).reshape(n, 8, 1)
    ml = (dmin * mn.float()).reshape(n, 8, 1)
    ql = _nibbles(b[:, 48:176], 4, 32).reshape(n, 8, 32)
    qh = _bits(b[:, 16:48], 1, 32).reshape(n, 8, 32)
    q = ql.bitwise_or_(qh << 4).float()
    return q.mul_(dl).sub_(ml).reshape(n, QK_K)


def _q6_k(b: torch.Tensor) -> torch.Tensor:
    import torch

    n = b.shape[0]
    scales = b[:, 192:208].view(torch.int8).float()
    d = (_f16(b, 208) * scales).reshape(n, 16, 1)
    ql = _nibbles(b[:, 0:128], 2, 64).reshape(n, 8, 32)
    qh = _crumbs(b[:, 128:192], 2, 32).reshape(n, 8, 32)
    q = ql.bitwise_or_(qh << 4).float().sub_(32.0).reshape(n, 16, 16)
    return q.mul_(d).reshape(n, QK_K)


_KERNELS: dict[GGMLQuantizationType, Callable[[torch.Tensor], torch.Tensor]] = {
    Q.Q4_0: _q4_0,
    Q.Q4_1: _q4_1,
    Q.Q5_0: _q5_0,
    Q.Q5_1: _q5_1,
    Q.Q8_0: _q8_0,
    Q.Q2_K: _q2_k,
    Q.Q3_K: _q3_k,
    Q.Q4_K: _q4_k,
    Q.Q5_K: _q5_k,
    Q.Q6_K: _q6_k,
}
assert set(_KERNELS) == BLOCK_TYPES


# --------------------------------------------------------------------------------------------- public API


def _as_bytes(raw: torch.Tensor) -> torch.Tensor:
    """Reinterpret any tensor as a flat uint8 tensor (no copy when it is contiguous)."""
    import torch

    flat = raw.contiguous().reshape(-1)
    return flat if flat.dtype == torch.uint8 else flat.view(torch.uint8)


def _dequantize_floats(data: torch.Tensor, qt: GGMLQuantizationType, n: int, dtype: torch.dtype) -> torch.Tensor:
    import torch

    source = {Q.F32: torch.float32, Q.F16: torch.float16, Q.BF16: torch.bfloat16}[qt]
    values = data.view(source)
    if values.numel() != n:
        raise GgufError(f"{qt.name} data holds {values.numel()} values, expected {n}")
    return values.to(dtype)


def _dequantize_blocks_into(blocks: torch.Tensor, qt: GGMLQuantizationType, out: torch.Tensor) -> None:
    """Dequantize (n_blocks, type_size) into ``out`` (n_blocks, block_size), a chunk of blocks at a time."""
    kernel = _KERNELS[qt]
    block_size = GGML_QUANT_SIZES[qt][0]
    step = max(1, _CHUNK_ELEMENTS // block_size)
    for start in range(0, blocks.shape[0], step):
        out[start : start + step].copy_(kernel(blocks[start : start + step]))


def dequantize(
    raw: torch.Tensor,
    qtype: GGMLQuantizationType | int | str,
    shape: tuple[int, ...],
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Dequantize GGUF tensor data to a tensor of numpy-order ``shape`` in ``dtype`` (default fp32).

    ``raw`` is the tensor's bytes as uint8 (any shape), or an already typed F32/F16/BF16 (or uint16 for BF16) tensor;
    it stays on its device, and so does the result. fp32 output equals ``gguf.quants.dequantize`` bit for bit.
    """
    import torch

    dtype = torch.float32 if dtype is None else dtype
    qt = quant_type(qtype)
    shape = tuple(int(s) for s in shape)
    n = math.prod(shape)
    data = _as_bytes(raw)
    if qt in FLOAT_TYPES:
        return _dequantize_floats(data, qt, n, dtype).reshape(shape)
    block_size, type_size = GGML_QUANT_SIZES[qt]
    if shape and shape[-1] % block_size:
        raise GgufError(f"row length {shape[-1]} is not a multiple of the {qt.name} block size {block_size}")
    n_blocks = n // block_size
    if data.numel() != n_blocks * type_size:
        raise GgufError(
            f"{qt.name} tensor of shape {shape} needs {n_blocks * type_size} bytes, got {data.numel()}"
        )
    blocks = data.reshape(n_blocks, type_size)
    if n <= _CHUNK_ELEMENTS:
        return _KERNELS[qt](blocks).to(dtype).reshape(shape)
    out = torch.empty((n_blocks, block_size), dtype=dtype, device=data.device)
    _dequantize_blocks_into(blocks, qt, out)
    return out.reshape(shape)


def dequantize_rows(
    raw_rows: torch.Tensor,
    qtype: GGMLQuantizationType | int | str,
    row_len: int,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Dequantize a batch of whole rows, ``(n_rows, row_bytes)`` uint8, to ``(n_rows, row_len)``.

    This is what embedding gathers and chunked output projections use: rows are independent in every GGUF type,
    so any subset of rows (``raw[idx]``) can be dequantized on its own.
    """
    if raw_rows.dim() != 2:
        raise GgufError(f"dequantize_rows expects a 2-D (rows, bytes) tensor, got shape {tuple(raw_rows.shape)}")
    qt = quant_type(qtype)
    expected = row_nbytes(qt, row_len) if qt in BLOCK_TYPES else None
    if expected is not None and raw_rows.shape[1] != expected:
        raise GgufError(f"{qt.name} rows of {row_len} values take {expected} bytes, got {raw_rows.shape[1]}")
    return dequantize(raw_rows, qt, (int(raw_rows.shape[0]), int(row_len)), dtype)
