"""Block-float formats, bit-exact against a scalar oracle written from the docs/tenstorrent.md text."""
from __future__ import annotations

import math
import struct

import pytest
import torch

from edgeawq.tt_backend.blockfloat import decode_blocks, encode_blocks, pack_tiles, round_trip, unpack_tiles


def oracle_block(values: list[float], bits: int) -> tuple[int, list[int]]:
    fields = [struct.unpack("<I", struct.pack("<f", v))[0] for v in values]
    E = max((f >> 23) & 0xFF for f in fields)
    codes = []
    for f in fields:
        sign, e, m = f >> 31, (f >> 23) & 0xFF, f & 0x7FFFFF
        if e == 0:
            codes.append(0)
            continue
        shift = E - e
        M = 0 if shift >= 32 else (0x800000 | m) >> shift
        s = 25 - bits
        q = (M + 2 ** (s - 1) - 1 + ((M >> s) & 1)) >> s
        q = min(q, 2 ** (bits - 1) - 1)
        codes.append(((sign if q else 0) << (bits - 1)) | q)
    return E, codes


def oracle_value(E: int, code: int, bits: int) -> float:
    q = code & (2 ** (bits - 1) - 1)
    return (-1) ** (code >> (bits - 1)) * q * 2.0 ** (E - 127 - (bits - 2))


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_random_blocks_match_the_oracle(bits):
    torch.manual_seed(bits)
    x = torch.randn(64, 16) * torch.logspace(-3, 3, 64).unsqueeze(1)
    x[3, 5] = 0.0
    exps, codes = encode_blocks(x, bits)
    decoded = decode_blocks(exps, codes, bits)
    for r in range(64):
        E, oc = oracle_block(x[r].tolist(), bits)
        assert int(exps[r]) == E and codes[r].tolist() == oc
        assert decoded[r].tolist() == [oracle_value(E, c, bits) for c in oc]


def block(values):
    return torch.tensor(values + [0.0] * (16 - len(values)), dtype=torch.float32)[None]


def test_clamp_without_renormalisation():
    # 7.9999 rounds up to 128/16 in bfp8, which does not fit 7 bits: clamped to 127/16 = 7.9375
    assert round_trip(block([7.9999]), 8)[0, 0].item() == 7.9375


def test_ties_round_to_even():
    # bfp8 keeps 6 fraction bits for the block maximum: 1 + 1/128 lies between 1 and 1 + 1/64 -> even (1.0);
    # 1 + 3/128 lies between 1 + 1/64 and 1 + 2/64 -> even (1 + 2/64)
    got = round_trip(block([1 + 1 / 128, 1 + 3 / 128]), 8)[0, :2].tolist()
    assert got == [1.0, 1 + 2 / 64]


def test_zero_denormal_and_sign_only_codes():
    tiny = 1e-40  # a denormal: exponent field 0 -> code 0
    exps, codes = encode_blocks(block([-tiny, 0.0, -0.0, 1.0, -2.0 ** -30]), 8)
    assert codes[0, :3].tolist() == [0, 0, 0]  # no sign-only codes for values that round to zero
    assert codes[0, 4].item() == 0            # -2**-30 shifts out entirely next to 1.0: sign dropped
    assert round_trip(block([-1.0]), 2)[0, 0].item() == -1.0


def test_mixed_exponents_in_a_block_lose_small_values():
    x = block([1000.0, 1.0, 0.5, -3.0])
    # bfp4: 1000 = 1.95 * 2**9 rounds to 8 * 2**7, clamped (no renormalisation) to 7 * 2**7 = 896
    assert round_trip(x, 4)[0, :4].tolist() == [896.0, 0.0, 0.0, 0.0]
    assert round_trip(x, 8)[0, :4].tolist() == [1000.0, 0.0, 0.0, 0.0]   # 7 bits relative to 2**9


@pytest.mark.parametrize("bits,size", [(8, 1088), (4, 576), (2, 320)])
def test_tile_byte_layout(bits, size):
    torch.manual_seed(0)
    x = torch.randn(32, 32)
    data = pack_tiles(x, bits)
    assert data.shape == (1, size) and data.dtype == torch.uint8
    # exponent of face 1, row 3 = block x[3, 16:32]; codes of face 2 row 0 start at 64 + 2*256*bits/8
    E, codes = oracle_block(x[3, 16:32].tolist(), bits)
    assert int(data[0, 16 + 3]) == E
    E2, codes2 = oracle_block(x[16, 0:16].tolist(), bits)
    start = 64 + 2 * 256 * bits // 8
    lanes = 8 // bits
    first = int(data[0, start])
    assert [(first >> (bits * i)) & (2 ** bits - 1) for i in range(lanes)] == codes2[:lanes]
    assert torch.equal(unpack_tiles(data, bits, 32, 32), round_trip(x, bits))


def test_padding_to_tiles_is_zero():
    x = torch.randn(40, 50)
    data = pack_tiles(x, 8)
    assert data.shape == (4, 1088)
    out = unpack_tiles(data, 8, 40, 50)
    assert torch.equal(out, round_trip(x, 8))
    full = unpack_tiles(data, 8, 64, 64)
    assert (full[40:] == 0).all() and (full[:, 50:] == 0).all()


@pytest.mark.parametrize("bits,max_rel", [(8, 2 ** -6), (4, 2 ** -2)])
def test_error_of_the_largest_value_in_a_block(bits, max_rel):
    torch.manual_seed(5)
    x = torch.randn(100, 16)
    err = (round_trip(x, bits) - x).abs()
    absmax = x.abs().amax(dim=1, keepdim=True)
    assert (err <= absmax * max_rel + 1e-12).all()
    assert math.isclose(float(round_trip(torch.ones(1, 16) * 3.0, 2)[0, 0]), 2.0)


@pytest.mark.parametrize("bits", [8, 4])
def test_chunked_conversion_equals_one_pass(bits):
    from edgeawq.tt_backend.blockfloat import _chunk_rows, _pack_tiles

    x = torch.randn(_chunk_rows(300) + 70, 300)                  # more rows than one chunk, ragged last chunk
    packed = pack_tiles(x, bits)
    assert torch.equal(packed, _pack_tiles(x, bits))
    assert torch.equal(unpack_tiles(packed, bits, *x.shape), round_trip(x, bits))
