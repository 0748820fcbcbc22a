"""The native weight layout, read back byte by byte, and which shapes and formats it refuses."""
from __future__ import annotations

import pytest
import torch

from edgeawq.cpu_backend.native_pack import layout_problem, native_matmul_reference, pack_native, quantize_activations


def random_weights(N, K, g, seed=0):
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (N, K), generator=gen).to(torch.uint8)
    scales = (torch.rand(N, K // g, generator=gen) * 0.02 + 0.001).half()
    zeros = torch.randint(0, 16, (N, K // g), generator=gen).to(torch.uint8)
    return codes, scales, zeros


@pytest.mark.parametrize("N,K,g", [(16, 64, 32), (37, 96, 8), (50, 256, 128)])
def test_layout_bytes_follow_the_documented_order(N, K, g):
    codes, scales, zeros = random_weights(N, K, g)
    w = pack_native(codes, scales, zeros)
    R, G = (N + 15) // 16, K // g
    assert w.lines.shape == (R, G, g // 8, 64) and w.meta.shape == (R, G, 48)
    for n, k in [(0, 0), (N - 1, K - 1), (N // 2, 13), (5, K - 6)]:
        r, i, j, within = n // 16, n % 16, k // g, k % g
        p, rest = within // 8, within % 8
        byte = int(w.lines[r, j, p, 4 * i + rest % 4])
        assert (byte >> 4 if rest >= 4 else byte & 0xF) == int(codes[n, k])
        meta = w.meta[r, j]
        assert meta[32 + i] == zeros[n, j]
        assert meta[2 * i: 2 * i + 2].view(torch.float16)[0] == scales[n, j]
    if N % 16:                                      # padding rows: code 0, scale 0, zero 0
        assert not w.lines[-1, :, :, 4 * (N % 16):].any() and not w.meta[-1, :, 2 * (N % 16): 32].any()


@pytest.mark.parametrize("bits,N,K,g", [(2, 16, 64, 16), (2, 37, 256, 128), (3, 16, 64, 32), (3, 37, 192, 96)])
def test_dense_layout_bits_follow_the_documented_order(bits, N, K, g):
    """Dense 2-bit: bits 2c.. of byte 4i + b of line (r, j, p) = code[16r + i, j*g + 16p + 4c + b]; dense 3-bit:
    low bits in parts 0 / 1 (c < 4 / c >= 4), the third bit as bit c of part 2, k = j*g + 32p + 4c + b."""
    gen = torch.Generator().manual_seed(bits + N)
    codes = torch.randint(0, 2 ** bits, (N, K), generator=gen).to(torch.uint8)
    scales, zeros = torch.ones(N, K // g).half(), torch.zeros(N, K // g, dtype=torch.uint8)
    lines = pack_native(codes, scales, zeros, bits=bits).lines
    span = 16 if bits == 2 else 32
    assert lines.shape == ((N + 15) // 16, K // g, g // span, 64 if bits == 2 else 192)
    for n in range(N):
        r, i = divmod(n, 16)
        for k in range(K):
            j, p, c, b = k // g, k % g // span, k % span // 4, k % 4
            byte = lines[r, j, p]
            got = (int(byte[64 * (c // 4) + 4 * i + b]) >> 2 * (c % 4)) & 3
            if bits == 3:
                got |= ((int(byte[128 + 4 * i + b]) >> c) & 1) << 2
            assert got == codes[n, k], (n, k)
    if bits == 3:                                    # groups that are not a multiple of 32 keep the nibble layout
        ones, none = torch.ones(N, 3).half(), torch.zeros(N, 3, dtype=torch.uint8)        # K = 48, g = 16
        assert pack_native(codes[:, :48], ones, none, bits=3).lines.shape[-2:] == (2, 64)


def test_layout_problems_are_named():
    assert layout_problem(64, 64, 32, 4, torch.float16) is None
    assert layout_problem(64, 64, 32, 3, torch.float16) is None
    assert layout_problem(64, 64, 32, 8, torch.float16) is None
    assert "5-bit" in layout_problem(64, 64, 32, 5, torch.float16)
    assert "group size 12" in layout_problem(64, 96, 12, 4, torch.float16)
    assert "group size 48" in layout_problem(64, 64, 48, 4, torch.float16)
    assert "fp16" in layout_problem(64, 64, 32, 4, torch.float32)


def test_activation_quantization_rounds_half_to_even_and_keeps_zero_groups():
    x = torch.tensor([[127.0, 0.5, 1.5, -2.5, *([0.0] * 4)], [0.0] * 8])
    q, s = quantize_activations(x, 8)
    assert s[0, 0] == 1.0 and q[0, :4].tolist() == [127, 0, 2, -2]
    assert s[1, 0] == 0 and not q[1].any()


def test_reference_matches_dequantized_matmul_within_int8_error():
    codes, scales, zeros = random_weights(48, 256, 64)
    x = torch.randn(3, 256)
    w = (codes.float() - zeros.float().repeat_interleave(64, 1)) * scales.float().repeat_interleave(64, 1)
    exact = x.double() @ w.double().t()
    got = native_matmul_reference(x, codes, scales, zeros)
    assert ((got - exact).norm() / exact.norm()).item() < 0.02
