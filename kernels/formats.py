"""Packed storage formats for per-group codes. One pack/unpack pair per format; layouts are exact.

Native formats (the project's checkpoints; codes along K, which is also ONNX Runtime MatMulNBits' B layout
once reshaped to [N, K/block, block*bits/8]):

  u8  : codes uint8 (N, K), one code per byte.
  u4k : codes (N, K) with values < 16 -> uint8 (N, K/2). Byte j of row n holds code[n, 2j] in bits 0-3 (low
        nibble) and code[n, 2j+1] in bits 4-7. Used for 4-bit codes and for 3-bit codes (values 0..7) in the
        4-bit container.
  u2k : codes (N, K) with values < 4 -> uint8 (N, K/4). Byte j of row n holds code[n, 4j+i] in bits 2i..2i+1.

AutoAWQ GEMM layout (interop, 4-bit only):

  awq_gemm : codes (N, K) -> int32 (K, N/8), packed along the OUTPUT dimension. Bits 4i..4i+3 of word
             [k, c] hold code[8c + ORDER[i], k] with ORDER = [0, 2, 4, 6, 1, 3, 5, 7]. Zero points (N, G)
             -> int32 (G, N/8) the same way. Words are stored as int32 (two's complement of the uint32 bits).
"""
from __future__ import annotations

import torch

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def native_format(bits: int) -> str:
    """The native format that stores `bits`-bit codes."""
    return {2: "u2k", 3: "u4k", 4: "u4k", 8: "u8"}[bits]


def _pack_along_k(codes: torch.Tensor, bits: int) -> torch.Tensor:
    N, K = codes.shape
    per_byte = 8 // bits
    if K % per_byte:
        raise ValueError(f"K={K} is not a multiple of {per_byte}")
    c = codes.to(torch.uint8).view(N, K // per_byte, per_byte)
    out = torch.zeros(N, K // per_byte, dtype=torch.uint8)
    for i in range(per_byte):
        out |= c[..., i] << (bits * i)
    return out


def _unpack_along_k(packed: torch.Tensor, bits: int) -> torch.Tensor:
    N, B = packed.shape
    per_byte = 8 // bits
    mask = (1 << bits) - 1
    parts = [(packed >> (bits * i)) & mask for i in range(per_byte)]
    return torch.stack(parts, dim=-1).view(N, B * per_byte)


def pack(codes: torch.Tensor, fmt: str) -> torch.Tensor:
    """codes uint8 (N, K) -> packed tensor of format `fmt` (see the module docstring)."""
    if fmt == "u8":
        return codes.to(torch.uint8).contiguous()
    if fmt == "u4k":
        return _pack_along_k(codes, 4)
    if fmt == "u2k":
        return _pack_along_k(codes, 2)
    raise ValueError(f"unknown packed format {fmt!r}")


def unpack(packed: torch.Tensor, fmt: str) -> torch.Tensor:
    """Inverse of `pack`: -> codes uint8 (N, K)."""
    if fmt == "u8":
        return packed
    if fmt == "u4k":
        return _unpack_along_k(packed, 4)
    if fmt == "u2k":
        return _unpack_along_k(packed, 2)
    raise ValueError(f"unknown packed format {fmt!r}")


def pack_awq_gemm(codes: torch.Tensor) -> torch.Tensor:
    """4-bit codes (N, K) [or zero points (N, G)] -> int32 (K, N/8) [(G, N/8)] in AutoAWQ's GEMM order."""
    t = codes.to(torch.int64).t().contiguous()                   # (K, N)
    K, N = t.shape
    if N % 8:
        raise ValueError(f"N={N} is not a multiple of 8")
    t = t.view(K, N // 8, 8)
    word = torch.zeros(K, N // 8, dtype=torch.int64)
    for i, col in enumerate(AWQ_ORDER):
        word |= t[..., col] << (4 * i)
    return torch.where(word >= 2**31, word - 2**32, word).to(torch.int32)


def unpack_awq_gemm(words: torch.Tensor) -> torch.Tensor:
    """Inverse of `pack_awq_gemm`: int32 (K, N/8) -> codes uint8 (N, K)."""
    w = words.to(torch.int64) & 0xFFFFFFFF
    K, C = w.shape
    out = torch.zeros(K, C, 8, dtype=torch.int64)
    for i, col in enumerate(AWQ_ORDER):
        out[..., col] = (w >> (4 * i)) & 0xF
    return out.view(K, C * 8).t().contiguous().to(torch.uint8)
