"""Per-group integer quantization of Linear weights (the numerics; storage formats live in kernels/formats.py).

A weight W (N out, K in) is cut into groups of `g` consecutive input channels of one output row
(g = K when group_size is -1, i.e. per output channel). Per group, with b bits and Q = 2**b - 1:

  asymmetric (zero_point=True, default):
      s = (max(w) - min(w)).clamp(min=1e-5) / Q
      z = clamp(-round(min(w) / s), 0, Q)
      q = clamp(round(w / s) + z, 0, Q)
  symmetric (zero_point=False):
      s = max(|w|).clamp(min=1e-5) / (2**(b-1) - 1)
      q = clamp(round(w / s), -2**(b-1), 2**(b-1) - 1) + 2**(b-1),   z = 2**(b-1)
  w_hat = (q - z) * s

Codes are always stored unsigned (0..Q) with a zero point, so both modes share one representation.
A third mode only comes from imported GGUF Q4_1 blocks (checkpoints/gguf_blocks.py), never from `quantize`:
  with group minimums (spec.mins=True): w_hat = (q - z) * s + m, z = 0 and m a float16 per group.
Scales are rounded to the scale dtype (fp16 by default) BEFORE the codes are computed, so that the stored
(q, z, s) reproduce w_hat exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UserError

BITS = (2, 3, 4, 8)
GROUP_SIZES = (32, 64, 128, 256, -1)


@dataclass(frozen=True)
class QuantSpec:
    bits: int = 4
    group_size: int = 128
    zero_point: bool = True
    mins: bool = False          # per-group float16 minimums added after scaling (GGUF Q4_1 imports only)

    def validate(self) -> "QuantSpec":
        if self.bits not in BITS:
            raise UserError(f"{self.bits}-bit weights are not supported.", f"Use --w_bit one of {BITS}.")
        if self.group_size not in GROUP_SIZES:
            raise UserError(f"Group size {self.group_size} is not supported.",
                            f"Use --group_size one of {GROUP_SIZES} (-1 = one group per output channel).")
        return self

    def group(self, K: int, layer: str = "") -> int:
        """The group length for a K-wide input; a K that is not a multiple of it is a UserError."""
        g = K if self.group_size == -1 else self.group_size
        if K % g:
            where = f"layer {layer}" if layer else "a layer"
            raise UserError(f"Cannot quantize {where}: its input size K={K} is not a multiple of the group size "
                            f"g={g}.", "Choose a --group_size that divides every layer's input size, or -1.")
        return g


@dataclass
class QuantizedWeight:
    """codes uint8 (N, K) in [0, 2**bits-1]; scales (N, K/g) scale dtype; zeros uint8 (N, K/g); mins float16
    (N, K/g) when spec.mins, else None."""

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    spec: QuantSpec
    mins: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self.codes, self.scales, self.zeros, dtype, self.mins)


def dequantize(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
               dtype: torch.dtype = torch.float32, mins: torch.Tensor | None = None) -> torch.Tensor:
    """(codes - zeros) * scales (+ mins) per group -> (N, K) in `dtype` (the arithmetic is done in fp32: one
    exact product for 4-bit codes and fp16 scales, then one rounding for the minimum, as llama.cpp's Q4_1)."""
    N, K = codes.shape
    n_groups = scales.shape[1]
    q = codes.view(N, n_groups, K // n_groups).float()                     # (N, G, g)
    w = (q - zeros.float().unsqueeze(-1)) * scales.float().unsqueeze(-1)   # (N, G, g)
    if mins is not None:
        w = w + mins.float().unsqueeze(-1)
    return w.view(N, K).to(dtype)


def group_grid(wg: torch.Tensor, spec: QuantSpec,
               scale_dtype: torch.dtype = torch.float16) -> tuple[torch.Tensor, torch.Tensor]:
    """Scales and zero points of groups `wg` (..., g) -> (s float32 already rounded to `scale_dtype`, z float32),
    both (...); the formulas of the module docstring."""
    qmax = 2 ** spec.bits - 1
    if spec.zero_point:
        wmax, wmin = wg.amax(dim=-1), wg.amin(dim=-1)
        s = ((wmax - wmin).clamp(min=1e-5) / qmax).to(scale_dtype).float()
        z = (-torch.round(wmin / s)).clamp(0, qmax)
    else:
        half = 2 ** (spec.bits - 1)
        s = (wg.abs().amax(dim=-1).clamp(min=1e-5) / (half - 1)).to(scale_dtype).float()
        z = torch.full_like(s, float(half))
    return s, z


def codes_on_grid(w: torch.Tensor, s: torch.Tensor, z: torch.Tensor, bits: int) -> torch.Tensor:
    """q = clamp(round(w / s) + z, 0, 2**bits - 1) elementwise (broadcasting), as float32."""
    return (torch.round(w / s) + z).clamp(0, 2 ** bits - 1)


def quantize(w: torch.Tensor, spec: QuantSpec, layer: str = "",
             scale_dtype: torch.dtype = torch.float16) -> QuantizedWeight:
    """Quantize a float weight (N, K) group-wise; see the module docstring for the exact formulas."""
    N, K = w.shape
    g = spec.group(K, layer)
    wg = w.detach().float().reshape(N, K // g, g)                          # (N, G, g)
    s, z = group_grid(wg, spec, scale_dtype)                               # (N, G) x2
    q = codes_on_grid(wg, s.unsqueeze(-1), z.unsqueeze(-1), spec.bits)     # (N, G, g)
    return QuantizedWeight(q.to(torch.uint8).view(N, K), s.to(scale_dtype), z.to(torch.uint8), spec)


def fake_quantize(w: torch.Tensor, spec: QuantSpec, layer: str = "") -> torch.Tensor:
    """Quantize then dequantize, in w's dtype: what AWQ searches through (never touches packed storage)."""
    return quantize(w, spec, layer).dequantize(w.dtype)
