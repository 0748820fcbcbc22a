"""Math-fidelity emulation of a Tenstorrent matmul (docs/tenstorrent.md).

The device multiplies weights held in SrcA by activations held in SrcB, using only part of each operand's
mantissa per pass (operand bits are truncated by masks, never rounded):
    SrcA: hi = hidden bit + top 4 mantissa bits, lo = the next 5 bits      (A = hi + lo: 9 mantissa bits)
    SrcB: hi = hidden bit + top 6 mantissa bits, lo = the next 4 bits      (B = hi + lo: 10 mantissa bits)
    LoFi  = A_hi * B_hi
    HiFi2 = A * B_hi
    HiFi3 = A * B_hi + A_hi * B_lo
    HiFi4 = A * B
Products of these short mantissas are exact in fp32. Accumulation is fp32 with `fp32_dest_acc`, else the running
sum is rounded to bf16 after each 16-wide chunk of K. Denormal operands are flushed to zero.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

FIDELITIES = ("LoFi", "HiFi2", "HiFi3", "HiFi4")


def truncate_mantissa(x: torch.Tensor, keep_bits: int) -> torch.Tensor:
    """fp32 x with all but the top `keep_bits` mantissa bits cleared; denormals and zeros -> 0 (sign kept)."""
    u = x.to(torch.float32).contiguous().view(torch.int32)
    mask = ~((1 << (23 - keep_bits)) - 1)
    u = u & mask
    exp_field = (u >> 23) & 0xFF
    u = torch.where(exp_field == 0, u & torch.tensor(-(1 << 31), dtype=torch.int32), u)
    return u.view(torch.float32)


def split_operand(x: torch.Tensor, hi_bits: int, lo_bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (hi, lo): hi keeps `hi_bits` mantissa bits, hi + lo keeps `hi_bits + lo_bits`."""
    hi = truncate_mantissa(x, hi_bits)
    full = truncate_mantissa(x, hi_bits + lo_bits)
    return hi, full - hi


@dataclass(frozen=True)
class SrcA:
    """Weights (K, N) float32 as the SrcA register sees them: `full` = hi + lo (9 mantissa bits), `hi` (5).

    `full` is `w` itself (no copy) when w already fits in 9 mantissa bits (bf16 and block-float values do);
    `hi` is None when built with need_hi=False (then only HiFi2 and HiFi4 can use it)."""
    full: torch.Tensor
    hi: torch.Tensor | None

    @classmethod
    def of(cls, w: torch.Tensor, need_hi: bool = True) -> "SrcA":
        w = w.float()
        full = truncate_mantissa(w, 9)
        if torch.equal(full, w):
            full = w
        return cls(full, truncate_mantissa(w, 4) if need_hi else None)


def _accumulate(pairs: list[tuple[torch.Tensor, torch.Tensor]], fp32_dest_acc: bool) -> torch.Tensor:
    """sum of b @ a over the operand pairs; with bf16 accumulation, rounded after each 16-wide K chunk.

    b (..., M, K), a (..., K, N) (batch dims broadcast). bf16 accumulation: each chunk's partial sum is exact-ish
    fp32 (the device's 16-wide inner product), the running sum is rounded to bf16 after every chunk."""
    if fp32_dest_acc:
        return sum(b @ a for b, a in pairs)
    K = pairs[0][0].shape[-1]
    acc = None
    for k0 in range(0, K, 16):
        chunk = sum(b[..., k0:k0 + 16] @ a[..., k0:k0 + 16, :] for b, a in pairs)
        acc = chunk if acc is None else acc + chunk
        acc = acc.to(torch.bfloat16).to(torch.float32)
    return acc


def fidelity_matmul_srca(x: torch.Tensor, a: SrcA, fidelity: str = "HiFi4", fp32_dest_acc: bool = True) -> torch.Tensor:
    """Emulated device matmul with prepared weights: x (..., M, K) @ a (..., K, N) -> (..., M, N) float32."""
    if fidelity not in FIDELITIES:
        raise ValueError(f"math fidelity must be one of {FIDELITIES}, not {fidelity!r}")
    if a.hi is None and fidelity in ("LoFi", "HiFi3"):
        raise ValueError(f"{fidelity} needs SrcA.hi; build the operand with need_hi=True")
    x = x.float()
    b_hi, b_lo = split_operand(x, 6, 4) if fidelity != "HiFi4" else (None, None)
    pairs = {
        "LoFi": lambda: [(b_hi, a.hi)],
        "HiFi2": lambda: [(b_hi, a.full)],
        "HiFi3": lambda: [(b_hi, a.full), (b_lo, a.hi)],
        "HiFi4": lambda: [(truncate_mantissa(x, 10), a.full)],
    }[fidelity]()
    return _accumulate(pairs, fp32_dest_acc)


def fidelity_matmul(x: torch.Tensor, w: torch.Tensor, fidelity: str = "HiFi4",
                    fp32_dest_acc: bool = True) -> torch.Tensor:
    """Emulated device matmul: activations x (..., K) @ weights w (K, N) -> (..., N) float32."""
    if fidelity not in FIDELITIES:
        raise ValueError(f"math fidelity must be one of {FIDELITIES}, not {fidelity!r}")
    return fidelity_matmul_srca(x, SrcA.of(w), fidelity, fp32_dest_acc)
