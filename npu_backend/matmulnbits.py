"""Per-group codes -> the inputs of ONNX Runtime's `com.microsoft.MatMulNBits` (docs/onnx_runtime.md).

MatMulNBits(A, B, scales, zero_points) computes A @ W^T with W[n, k] = (code[n, k] - zp[n, k // bs]) * scale[n,
k // bs], attributes K, N, bits, block_size (= our group size; a power of two >= 16), accuracy_level.

* B: uint8 (N, k_blocks, bs * bits / 8); codes packed along K, low bits first (4-bit: byte = c[2j] | c[2j+1] << 4).
* scales: float32 (N, k_blocks) (the graph's activation dtype; fp16 checkpoint scales convert exactly).
* zero_points: uint8 (N, ceil(k_blocks * bits / 8)), packed the same way.

Container bits: 2-, 3- and 4-bit codes (values < 16) go in the 4-bit container, which ORT's CPU kernels and the
NPU flows support; 8-bit codes in the 8-bit container. The dequantized weights are identical either way.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UserError


@dataclass
class MatMulNBitsWeights:
    B: np.ndarray               # uint8 (N, k_blocks, bs * bits / 8)
    scales: np.ndarray          # float32 (N, k_blocks)
    zero_points: np.ndarray     # uint8 (N, ceil(k_blocks * bits / 8))
    K: int
    N: int
    bits: int                   # container bits: 4 or 8
    block_size: int


def container_bits(bits: int) -> int:
    return 4 if bits <= 4 else 8


def block_size_problem(group: int, K: int, where: str) -> str | None:
    """Why MatMulNBits cannot take groups of `group` over K inputs at `where`, or None."""
    if group < 16 or group & (group - 1):
        return (f"{where} has group size {group} (K={K}), which MatMulNBits cannot use: its block_size must be a "
                "power of two >= 16")
    return None


def check_block_size(group: int, K: int, where: str) -> None:
    problem = block_size_problem(group, K, where)
    if problem:
        raise UserError(f"{problem}.", "Quantize with --group_size 32, 64, 128 or 256 for the ONNX Runtime graph "
                        "(-1 works only when every input size is a power of two).")


def _pack_low_first(values: np.ndarray, bits: int) -> np.ndarray:
    """uint8 (..., M) values < 2**bits -> uint8 (..., ceil(M * bits / 8)), low bits first."""
    if bits == 8:
        return values.astype(np.uint8)
    if values.shape[-1] % 2:
        values = np.concatenate([values, np.zeros(values.shape[:-1] + (1,), np.uint8)], axis=-1)
    return (values[..., 0::2] | (values[..., 1::2] << 4)).astype(np.uint8)


def to_matmulnbits(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int,
                   where: str = "a layer") -> MatMulNBitsWeights:
    """codes uint8 (N, K); scales (N, K/g); zeros uint8 (N, K/g) -> MatMulNBits inputs."""
    N, K = codes.shape
    k_blocks = scales.shape[1]
    group = K // k_blocks
    check_block_size(group, K, where)
    cbits = container_bits(bits)
    c = codes.numpy().reshape(N, k_blocks, group)                                   # (N, k_blocks, bs)
    B = _pack_low_first(c, cbits)                                                   # (N, k_blocks, bs*bits/8)
    zp = _pack_low_first(zeros.numpy(), cbits)                                      # (N, ceil(k_blocks*bits/8))
    return MatMulNBitsWeights(np.ascontiguousarray(B), scales.float().numpy(), np.ascontiguousarray(zp),
                              K, N, cbits, group)


def dequantize_matmulnbits(w: MatMulNBitsWeights) -> torch.Tensor:
    """The float32 (N, K) weight MatMulNBits computes with (an independent reader, used by the tests)."""
    if w.bits == 8:
        codes, zp = w.B.reshape(w.N, w.K), w.zero_points
    else:
        codes = np.stack([w.B & 0xF, w.B >> 4], axis=-1).reshape(w.N, w.K)
        zp = np.stack([w.zero_points & 0xF, w.zero_points >> 4], axis=-1).reshape(w.N, -1)
    k_blocks = w.scales.shape[1]
    zp = zp[:, :k_blocks].astype(np.float32)
    W = (codes.reshape(w.N, k_blocks, w.block_size).astype(np.float32) - zp[..., None]) * w.scales[..., None]
    return torch.from_numpy(W.reshape(w.N, w.K))
