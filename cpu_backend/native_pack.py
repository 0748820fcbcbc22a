"""Per-group codes -> the native kernels' weight layout, and the exact math those kernels compute (the oracle
their tests compare with).

Layout (cpu_backend/native/decoder.cpp states it too): for N outputs, K inputs, group size g (a multiple of 8 that
divides K), R = ceil(N / 16) blocks of 16 rows, G = K / g groups:

* lines uint8 (R, G, g/8, 64): byte 4*i + b of line (r, j, p) holds code[16r + i, j*g + 8p + b] in its low
  nibble and code[16r + i, j*g + 8p + 4 + b] in its high nibble (i = row in block, b = 0..3);
* meta uint8 (R, G, 48): the 16 rows' fp16 scales of group j (32 bytes, little-endian), then their 16 uint8
  zero points; or, for weights with group minimums (GGUF Q4_1 imports, zero points 0), meta uint8 (R, G, 64):
  the 16 fp16 scales, then the 16 rows' fp16 minimums (W = code * scale + min).

* 8-bit codes: lines uint8 (R, G, g/4, 64): byte 4*i + b of line (r, j, p) holds code[16r + i, j*g + 4p + b];
  meta as above (zero points).

Rows past N are padding: code 0, scale 0, zero 0. 2-, 3- and 4-bit codes (< 16) take the nibble layout, 8-bit
codes the byte layout.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class NativeWeights:
    lines: torch.Tensor      # uint8 (R, G, g/8, 64), or (R, G, g/4, 64) for 8-bit codes
    meta: torch.Tensor       # uint8 (R, G, 48), or (R, G, 64) with group minimums
    N: int
    K: int
    group: int


def layout_problem(N: int, K: int, group: int, bits: int, scale_dtype: torch.dtype) -> str | None:
    """Why codes of this shape and scale dtype cannot use the native layout, or None."""
    if bits not in (2, 3, 4, 8):
        return f"{bits}-bit codes (the native kernels take 2-, 3-, 4- and 8-bit codes)"
    if group % 8 or K % group:
        return f"group size {group} with K={K} (it must be a multiple of 8 that divides K)"
    if scale_dtype != torch.float16:
        return f"{scale_dtype} scales (the native layout keeps the checkpoint's fp16 scales)"
    return None


def pack_native(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                mins: torch.Tensor | None = None, bits: int = 4) -> NativeWeights:
    """codes uint8 (N, K) (< 16 unless bits is 8); scales (N, G) fp16; zeros uint8 (N, G); mins fp16 (N, G) or
    None -> NativeWeights. With mins the zero points must be 0 (the 64-byte meta has no room for them)."""
    if mins is not None and (bool(zeros.any()) or bits == 8):
        raise ValueError("group minimums need 4-bit codes and zero points 0 in the native layout")
    N, K = codes.shape
    G = scales.shape[1]
    g = K // G
    R = (N + 15) // 16
    pad = 16 * R - N
    c = torch.nn.functional.pad(codes.to(torch.uint8), (0, 0, 0, pad))                  # (16R, K)
    s = torch.nn.functional.pad(scales.to(torch.float16), (0, 0, 0, pad))              # (16R, G)
    z = torch.nn.functional.pad(zeros.to(torch.uint8), (0, 0, 0, pad))                 # (16R, G)
    if bits == 8:
        lines = c.view(R, 16, G, g // 4, 4).permute(0, 2, 3, 1, 4).reshape(R, G, g // 4, 64)   # k = j*g + 4p + b
    else:
        c = c.view(R, 16, G, g // 8, 2, 4)                       # k = j*g + 8p + 4*half + b
        lines = (c[..., 0, :] | (c[..., 1, :] << 4)).permute(0, 2, 3, 1, 4).reshape(R, G, g // 8, 64)
    s = s.view(R, 16, G).permute(0, 2, 1).contiguous().view(torch.uint8)                # (R, G, 32)
    z = z.view(R, 16, G).permute(0, 2, 1)                                               # (R, G, 16)
    if mins is not None:
        m = torch.nn.functional.pad(mins.to(torch.float16), (0, 0, 0, pad))             # (16R, G)
        z = m.view(R, 16, G).permute(0, 2, 1).contiguous().view(torch.uint8)            # (R, G, 32)
    meta = torch.cat([s, z], dim=-1).contiguous()                                       # (R, G, 48 or 64)
    return NativeWeights(lines.contiguous(), meta, N, K, g)


def quantize_activations(x: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x float32 (M, K) -> (q int8 values as int32 (M, K), s float32 (M, K/group)): per group s = max|x| / 127
    (fp32), q = round-half-even(x * (1 / s)), 0 where s == 0."""
    M, K = x.shape
    xg = x.float().reshape(M, K // group, group)
    s = xg.abs().amax(-1) / 127.0                                                      # (M, G) fp32
    inv = torch.where(s > 0, 1.0 / s, torch.zeros_like(s))
    q = torch.round(xg * inv[..., None]).to(torch.int32)                                # half to even
    return q.reshape(M, K), s


def native_matmul_reference(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor,
                            zeros: torch.Tensor, mins: torch.Tensor | None = None) -> torch.Tensor:
    """What the native quantized matmul computes, in float64: x float32 (M, K), codes (N, K), scales/zeros (N, G)
    -> (M, N) = sum_j scale[n,j] * s[m,j] * (sum_k code[n,k] q[m,k] - zero[n,j] * sum_k q[m,k])
                (+ sum_j min[n,j] * s[m,j] * sum_k q[m,k] with mins)."""
    N, K = codes.shape
    G = scales.shape[1]
    g = K // G
    q, s = quantize_activations(x, g)
    qd = q.double().reshape(-1, G, g)                                                  # (M, G, g)
    cd = codes.double().reshape(N, G, g)                                               # (N, G, g)
    dots = torch.einsum("mjk,njk->mnj", qd, cd)                                        # (M, N, G)
    dots = dots - zeros.double()[None] * qd.sum(-1)[:, None, :]
    y = dots * scales.to(torch.float16).double()[None]                                 # (M, N, G)
    if mins is not None:
        y = y + mins.to(torch.float16).double()[None] * qd.sum(-1)[:, None, :]
    return (y * s.double()[:, None, :]).sum(-1)
