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

* dense 2-bit codes (group size a multiple of 16): lines uint8 (R, G, g/16, 64): bits 2c..2c+1 of byte 4*i + b of
  line (r, j, p) hold code[16r + i, j*g + 16p + 4c + b], c = 0..3 (16 rows x 16 codes a line, 2 bits a weight);
* dense 3-bit codes (group size a multiple of 32): lines uint8 (R, G, g/32, 192): step p is three 64-byte parts
  covering codes k = j*g + 32p + 4c + b, c = 0..7, of the 16 rows: part 0 holds their low two bits for c = 0..3
  and part 1 for c = 4..7 (bits 2(c mod 4).. of byte 4*i + b, as the 2-bit line), part 2 their third bit (bit c of
  byte 4*i + b): 16 rows x 32 codes in 192 bytes, 3 bits a weight.

Rows past N are padding: code 0, scale 0, zero 0. 8-bit codes take the byte layout; 2- and 3-bit codes the dense
layouts when the group size allows, else (like 4-bit codes) the nibble layout (4 bits a weight).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class NativeWeights:
    lines: torch.Tensor      # uint8 (R, G, g/8, 64); 8-bit codes (R, G, g/4, 64); dense 2-bit (R, G, g/16, 64),
                             # dense 3-bit (R, G, g/32, 192)
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
    elif dense_layout(bits, g):
        lines = _dense_lines(c, R, G, g, bits)
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


def dense_layout(bits: int, group: int) -> bool:
    """Whether codes of `bits` bits with this group size take a dense layout (2 or 3 bits a weight)."""
    return (bits == 2 and group % 16 == 0) or (bits == 3 and group % 32 == 0)


def _dense_lines(c: torch.Tensor, R: int, G: int, g: int, bits: int) -> torch.Tensor:
    """c uint8 (16R, K) codes < 2**bits -> the dense 2-bit (R, G, g/16, 64) or 3-bit (R, G, g/32, 192) lines."""
    span = 16 if bits == 2 else 32                                                     # codes per row and step
    q = c.view(R, 16, G, g // span, span // 4, 4).permute(0, 2, 3, 1, 5, 4)            # (R, G, P, i, b, c)
    low = q & 3

    def two_bit_part(part: torch.Tensor) -> torch.Tensor:                               # (..., i, b, 4) -> (..., 64)
        shifts = torch.arange(0, 8, 2, dtype=torch.uint8)
        return (part << shifts).sum(-1, dtype=torch.uint8).flatten(-2)                 # byte 4*i + b

    if bits == 2:
        return two_bit_part(low).contiguous()
    high = ((q >> 2) & 1) << torch.arange(8, dtype=torch.uint8)                        # bit c of byte 4*i + b
    parts = [two_bit_part(low[..., :4]), two_bit_part(low[..., 4:]), high.sum(-1, dtype=torch.uint8).flatten(-2)]
    return torch.cat(parts, -1).contiguous()                                           # (R, G, g/32, 192)


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
