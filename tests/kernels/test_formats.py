"""Packed formats: round trips and the exact bit layouts of the docstrings, checked bit by bit."""
from __future__ import annotations

import pytest
import torch

from edgeawq.kernels.formats import pack, pack_awq_gemm, unpack, unpack_awq_gemm


@pytest.mark.parametrize("fmt,bits", [("u8", 8), ("u4k", 4), ("u4k", 3), ("u2k", 2)])
def test_round_trip(fmt, bits):
    codes = torch.randint(0, 2 ** bits, (16, 64), dtype=torch.uint8)
    assert torch.equal(unpack(pack(codes, fmt), fmt), codes)


def test_u4k_layout_low_nibble_first():
    codes = torch.tensor([[1, 2, 3, 4, 15, 0]], dtype=torch.uint8)
    assert pack(codes, "u4k").tolist() == [[0x21, 0x43, 0x0F]]


def test_u2k_layout():
    codes = torch.tensor([[1, 2, 3, 0]], dtype=torch.uint8)
    assert pack(codes, "u2k").tolist() == [[1 | 2 << 2 | 3 << 4]]


def test_awq_gemm_layout_matches_an_independent_reading():
    torch.manual_seed(0)
    N, K = 16, 4
    codes = torch.randint(0, 16, (N, K), dtype=torch.uint8)
    words = pack_awq_gemm(codes)
    assert words.dtype == torch.int32 and words.shape == (K, N // 8)
    order = [0, 2, 4, 6, 1, 3, 5, 7]
    for k in range(K):
        for c in range(N // 8):
            word = int(words[k, c]) & 0xFFFFFFFF
            for i in range(8):
                assert (word >> (4 * i)) & 0xF == int(codes[8 * c + order[i], k])
    assert torch.equal(unpack_awq_gemm(words), codes)
