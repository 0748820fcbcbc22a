"""Tenstorrent block floating point: bfloat8_b, bfloat4_b, bfloat2_b (host encoder semantics, docs/tenstorrent.md).

Blocks: 16 consecutive values along the last dimension (one face row) share one 8-bit exponent. Encoding with
Bits = 8, 4 or 2, values widened to fp32 (exponent field e, 23-bit mantissa m):
    E = max e over the block
    e == 0 (zero or denormal) -> code 0
    M = (0x800000 | m) >> (E - e)              (truncating; a shift >= 32 gives 0)
    s = 25 - Bits;  q = (M + 2**(s-1) - 1 + ((M >> s) & 1)) >> s     (round to nearest, ties to even)
    q = min(q, 2**(Bits-1) - 1)                (127 / 7 / 1; no renormalisation)
    code = sign << (Bits-1) | q,  the sign kept only when q != 0
Decoding: (-1)**sign * q * 2**(E - 127 - (Bits - 2)).

Tile byte layout (32x32 tile = four 16x16 faces: face0 rows 0-15 cols 0-15, face1 rows 0-15 cols 16-31,
face2 rows 16-31 cols 0-15, face3 rows 16-31 cols 16-31): 64 exponent bytes (faces 0..3, rows 0..15 each), then
the codes of faces 0..3, each row-major, packed into little-endian uint32 words with the first lane in the low
bits (bfp8: 4 lanes of 8 bits, bfp4: 8 lanes of 4 bits, bfp2: 16 lanes of 2 bits). 1088 / 576 / 320 bytes per
tile. Tensors are zero-padded to multiples of 32 in both dimensions. Inf and NaN are not treated specially.
"""
from __future__ import annotations

import torch

FORMATS = {"bfloat8_b": 8, "bfloat4_b": 4, "bfloat2_b": 2}
TILE_BYTES = {8: 1088, 4: 576, 2: 320}
BLOCK = 16


def encode_blocks(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x (..., 16k) -> (exponents uint8 (..., k), codes uint8 (..., 16k)), blocks of 16 along the last dim."""
    if bits not in TILE_BYTES:
        raise ValueError(f"block-float width must be 8, 4 or 2, not {bits}")
    shape = x.shape
    # int32 arithmetic throughout: M < 2**24 and the rounding adds < 2**23, so nothing overflows
    u = x.detach().to(torch.float32).contiguous().view(torch.int32)
    u = u.view(*shape[:-1], shape[-1] // BLOCK, BLOCK)                 # (..., k, 16)
    sign = (u >> 31) & 1
    e = (u >> 23) & 0xFF
    E = e.amax(dim=-1, keepdim=True)                                   # (..., k, 1)
    shift = E - e
    M = (u & 0x7FFFFF) | 0x800000
    M = torch.where(shift >= 32, torch.zeros_like(M), M >> shift.clamp(max=31))
    s = 25 - bits
    q = (M + (1 << (s - 1)) - 1 + ((M >> s) & 1)) >> s
    q = q.clamp(max=(1 << (bits - 1)) - 1)
    q = torch.where(e == 0, torch.zeros_like(q), q)
    code = torch.where(q != 0, sign, torch.zeros_like(sign)) << (bits - 1) | q
    return E.squeeze(-1).to(torch.uint8), code.view(shape).to(torch.uint8)


def decode_blocks(exponents: torch.Tensor, codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of `encode_blocks` (up to the rounding) -> float32 of codes' shape."""
    shape = codes.shape
    c = codes.to(torch.int32).view(*shape[:-1], shape[-1] // BLOCK, BLOCK)
    q = (c & ((1 << (bits - 1)) - 1)).to(torch.float32)
    sign = 1.0 - 2.0 * ((c >> (bits - 1)) & 1).to(torch.float32)
    scale = exponents.to(torch.int32).unsqueeze(-1) - 127 - (bits - 2)
    return torch.ldexp(sign * q, scale.to(torch.float32)).view(shape)


def round_trip(x: torch.Tensor, bits: int) -> torch.Tensor:
    """What the device holds for x stored as a block-float tensor (blocks along the last dim), as float32."""
    pad = (-x.shape[-1]) % BLOCK
    xp = torch.nn.functional.pad(x.float(), (0, pad)) if pad else x.float()
    out = decode_blocks(*encode_blocks(xp, bits), bits)
    return out[..., : x.shape[-1]] if pad else out


def _tiles(x: torch.Tensor) -> torch.Tensor:
    """(R, C) -> zero-padded faces (nR, nC, 4, 16, 16) in tile order (row of tiles major) and face order 0..3."""
    R, C = x.shape
    x = torch.nn.functional.pad(x.float(), (0, (-C) % 32, 0, (-R) % 32))
    nR, nC = x.shape[0] // 32, x.shape[1] // 32
    t = x.view(nR, 32, nC, 32).permute(0, 2, 1, 3)                     # (nR, nC, 32, 32)
    faces = t.reshape(nR, nC, 2, 16, 2, 16).permute(0, 1, 2, 4, 3, 5)  # (nR, nC, fr, fc, 16, 16)
    return faces.reshape(nR, nC, 4, 16, 16)


def _untiles(faces: torch.Tensor, R: int, C: int) -> torch.Tensor:
    nR, nC = faces.shape[:2]
    t = faces.view(nR, nC, 2, 2, 16, 16).permute(0, 1, 2, 4, 3, 5).reshape(nR, nC, 32, 32)
    return t.permute(0, 2, 1, 3).reshape(nR * 32, nC * 32)[:R, :C]


def _chunk_rows(C: int) -> int:
    """Rows per conversion chunk: tile rows of about 2**20 values, so the temporaries stay in cache (a whole 7B
    matrix at once runs 10x slower than in chunks)."""
    return max(32, (2 ** 20 // max(C, 1)) // 32 * 32)


def pack_tiles(x: torch.Tensor, bits: int) -> torch.Tensor:
    """x (R, C) -> uint8 (n_tiles, TILE_BYTES[bits]) in the tile byte layout of the module docstring."""
    R, C = x.shape
    step = _chunk_rows(C)
    if R > step:                                   # tile rows are independent and stored one after the other
        return torch.cat([_pack_tiles(x[r:r + step], bits) for r in range(0, R, step)])
    return _pack_tiles(x, bits)


def _pack_tiles(x: torch.Tensor, bits: int) -> torch.Tensor:
    faces = _tiles(x)                                                   # (nR, nC, 4, 16, 16)
    exps, codes = encode_blocks(faces, bits)                            # (.., 4, 16), (.., 4, 16, 16)
    n = faces.shape[0] * faces.shape[1]
    lanes = 8 // bits
    c = codes.reshape(n, 1024 // lanes, lanes).to(torch.int32)
    packed = torch.zeros(n, 1024 // lanes, dtype=torch.int32)
    for i in range(lanes):
        packed |= c[..., i] << (bits * i)
    return torch.cat([exps.reshape(n, 64), packed.to(torch.uint8)], dim=1)


def unpack_tiles(data: torch.Tensor, bits: int, R: int, C: int) -> torch.Tensor:
    """Inverse of `pack_tiles` -> float32 (R, C) (the decoded block-float values)."""
    step = _chunk_rows(C)
    if R > step:
        per = -(-C // 32) * (step // 32)                   # tiles per chunk of `step` rows
        return torch.cat([_unpack_tiles(data[i * per:(i + 1) * per], bits, min(step, R - r), C)
                          for i, r in enumerate(range(0, R, step))])
    return _unpack_tiles(data, bits, R, C)


def _unpack_tiles(data: torch.Tensor, bits: int, R: int, C: int) -> torch.Tensor:
    nR, nC = -(-R // 32), -(-C // 32)
    exps = data[:, :64].reshape(nR, nC, 4, 16, 1)                      # one exponent per face row
    lanes = 8 // bits
    b = data[:, 64:].to(torch.int32)
    codes = torch.stack([(b >> (bits * i)) & ((1 << bits) - 1) for i in range(lanes)], dim=-1)
    codes = codes.reshape(nR, nC, 4, 16, 16).to(torch.uint8)
    return _untiles(decode_blocks(exps, codes, bits), R, C)
