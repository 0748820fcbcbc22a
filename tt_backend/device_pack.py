"""Block-float rounding of values the Tenstorrent device converts itself (KV-cache writes, op outputs).

The host encoder (blockfloat.py) rounds ties-to-even from fp32. The device's packer works from its 16-bit
registers instead (docs/tenstorrent.md), per block of 16 values along the last dimension:
    1. truncate fp32 to bf16 (drop the low 16 bits);
    2. round to E8M6 (6 mantissa bits), ties away from zero; a carry out of the mantissa raises the exponent;
       exponent field 0 (zero, denormal) -> 0;
    3. E = the block's largest exponent field; each value's 7-bit magnitude m = 1.mmmmmm (64..127) is aligned
       to E: q = (m + 2**(k-1)) >> k with k = E - e (ties away from zero; k = 0 keeps m; k >= 8 gives 0);
    4. bfloat8_b keeps q (7 bits); bfloat4_b keeps q >> 4 (3 bits, truncated); bfloat2_b keeps q >> 6 (1 bit).
Decoding is the host format's: (-1)**sign * q_b * 2**(E - 127 - (b - 2)).
"""
from __future__ import annotations

import torch

from .blockfloat import BLOCK, TILE_BYTES


def device_encode_blocks(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (..., 16k) -> (exponents int32 (..., k, 1), magnitudes q_b int32 (..., k, 16), signs int32 (..., k, 16))."""
    if bits not in TILE_BYTES:
        raise ValueError(f"block-float width must be 8, 4 or 2, not {bits}")
    shape = x.shape
    u = x.detach().to(torch.float32).contiguous().view(torch.int32) & -65536       # 1. truncate to bf16
    u = u.view(*shape[:-1], shape[-1] // BLOCK, BLOCK)                            # (..., k, 16)
    sign = (u >> 31) & 1
    mag = u & 0x7FFFFFFF
    mag = ((mag + (1 << 16)) >> 17) << 17                                         # 2. E8M6, ties away from zero
    e = (mag >> 23) & 0xFF
    m7 = ((mag >> 17) & 0x3F) | 0x40                                              # 1.mmmmmm as 64..127
    E = e.amax(dim=-1, keepdim=True)                                              # 3. shared exponent
    k = (E - e).clamp(max=8)
    half = torch.where(k > 0, 1 << (k - 1).clamp(min=0), torch.zeros_like(k))
    q = (m7 + half) >> k
    q = torch.where(e == 0, torch.zeros_like(q), q)
    q = q >> (8 - bits)                                                           # 4. narrower formats truncate
    return E, q, torch.where(q != 0, sign, torch.zeros_like(sign))


def device_round_trip(x: torch.Tensor, bits: int) -> torch.Tensor:
    """What the device stores for x (blocks of 16 along the last dim, zero-padded), decoded to float32."""
    pad = (-x.shape[-1]) % BLOCK
    xp = torch.nn.functional.pad(x.float(), (0, pad)) if pad else x.float()
    E, q, sign = device_encode_blocks(xp, bits)
    scale = (E - 127 - (bits - 2)).to(torch.float32)
    out = torch.ldexp((1 - 2 * sign).to(torch.float32) * q.to(torch.float32), scale).view(xp.shape)
    return out[..., : x.shape[-1]] if pad else out
