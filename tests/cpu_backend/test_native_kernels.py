"""The compiled native kernels (both instruction sets this CPU can run) against the exact math of
cpu_backend/native_pack.native_matmul_reference."""
from __future__ import annotations

import ctypes
import os

import pytest
import torch

from edgeawq.cpu_backend import native_build
from edgeawq.cpu_backend.native_pack import native_matmul_reference, pack_native

from .test_native_pack import random_weights

REASON = native_build.unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"native kernels cannot build here: {REASON}")
ISAS = [isa for isa, need in native_build.CPU_FLAGS.items() if need <= native_build.cpu_flags()]


@pytest.fixture(scope="module", params=ISAS)
def ext(request):
    module = native_build.load(request.param)
    assert module.isa() == request.param
    return module


# M covers decode (1), partial tiles, several tiles and more than one 128-token chunk; N covers padded blocks.
@pytest.mark.parametrize("M,N,K,g", [(1, 40, 256, 128), (3, 37, 96, 32), (9, 64, 512, 64), (20, 33, 64, 8),
                                     (130, 48, 256, 256), (2, 16, 128, 16)])
@pytest.mark.parametrize("threads", [1, 2])
def test_quantized_matmul_equals_the_exact_int8_math(ext, M, N, K, g, threads):
    codes, scales, zeros = random_weights(N, K, g, seed=M + N)
    x = torch.randn(M, K) * 3
    x[0, :g] = 0.0                                   # a group of zeros: scale 0
    bias = torch.randn(N)
    w = pack_native(codes, scales, zeros)
    got = ext.Linear(w.lines, w.meta, bias, N, K, g, threads).forward(x)
    expected = native_matmul_reference(x, codes, scales, zeros) + bias.double()
    assert got.shape == (M, N)
    assert ((got.double() - expected).abs().max() / expected.abs().max()).item() < 1e-6


@pytest.mark.parametrize("M,N,K,g", [(1, 40, 256, 32), (9, 37, 96, 32), (130, 48, 64, 32)])
def test_group_minimums_matmul_equals_the_exact_int8_math(ext, M, N, K, g):
    """GGUF Q4_1 layout: W = code * scale + min (zero points 0, fp16 minimums in the 64-byte meta)."""
    codes, scales, _ = random_weights(N, K, g, seed=M + N)
    mins = (torch.randn(N, K // g) * 0.05).half()
    zeros = torch.zeros(N, K // g, dtype=torch.uint8)
    x = torch.randn(M, K) * 3
    w = pack_native(codes, scales, zeros, mins)
    assert w.meta.shape[-1] == 64
    got = ext.Linear(w.lines, w.meta, None, N, K, g, 2).forward(x)
    expected = native_matmul_reference(x, codes, scales, zeros, mins)
    assert ((got.double() - expected).abs().max() / expected.abs().max()).item() < 1e-6
    without = native_matmul_reference(x, codes, scales, zeros)
    assert (without - expected).abs().max() > 1e-2 * expected.abs().max()      # the minimums do contribute


@pytest.mark.parametrize("M,N,K,g", [(1, 40, 768, 768), (3, 37, 96, 32), (9, 64, 512, 128), (130, 33, 64, 8)])
def test_8_bit_matmul_equals_the_exact_int8_math(ext, M, N, K, g):
    """8-bit codes (0..255, any zero point): the byte layout, 16 rows x 4 codes a line."""
    gen = torch.Generator().manual_seed(M + N)
    codes = torch.randint(0, 256, (N, K), generator=gen, dtype=torch.uint8)
    codes[0] = 255                                    # the largest products (AVX2: no int16 saturation)
    scales = (torch.rand(N, K // g, generator=gen) * 0.01 + 1e-3).half()
    zeros = torch.randint(0, 256, (N, K // g), generator=gen, dtype=torch.uint8)
    x = torch.randn(M, K, generator=gen) * 3
    x[-1, :g] = -x[-1, :g].abs()                     # a group at -127 after quantization
    bias = torch.randn(N, generator=gen)
    w = pack_native(codes, scales, zeros, bits=8)
    assert w.lines.shape == ((N + 15) // 16, K // g, g // 4, 64)
    got = ext.Linear(w.lines, w.meta, bias, N, K, g, 2).forward(x)
    expected = native_matmul_reference(x, codes, scales, zeros) + bias.double()
    assert ((got.double() - expected).abs().max() / expected.abs().max()).item() < 1e-6


@pytest.mark.parametrize("bits", [2, 3])
@pytest.mark.parametrize("M,N,K,g", [(1, 40, 256, 128), (3, 37, 96, 32), (9, 64, 512, 64), (130, 33, 768, 768),
                                     (5, 16, 64, 16)])
def test_dense_2_and_3_bit_matmul_equals_the_exact_int8_math(ext, bits, M, N, K, g):
    """Dense 2- and 3-bit layouts (g = 16 with 3-bit codes: the nibble layout), largest codes and -127 activations
    included (AVX2 adds up to 8 maddubs pair sums in int16)."""
    gen = torch.Generator().manual_seed(M + N + bits)
    top = 2 ** bits - 1
    codes = torch.randint(0, top + 1, (N, K), generator=gen, dtype=torch.uint8)
    codes[0] = top
    scales = (torch.rand(N, K // g, generator=gen) * 0.02 + 1e-3).half()
    zeros = torch.randint(0, top + 1, (N, K // g), generator=gen, dtype=torch.uint8)
    x = torch.randn(M, K, generator=gen) * 3
    x[-1, :g] = -x[-1, :g].abs()
    x[-1, 0] = -100.0                               # the group's maximum: its other values quantize small
    bias = torch.randn(N, generator=gen)
    w = pack_native(codes, scales, zeros, bits=bits)
    dense = g % (16 if bits == 2 else 32) == 0
    assert w.lines.numel() == (N + 15) // 16 * K * 16 * (bits if dense else 4) // 8
    got = ext.Linear(w.lines, w.meta, bias, N, K, g, 2).forward(x)
    expected = native_matmul_reference(x, codes, scales, zeros) + bias.double()
    assert ((got.double() - expected).abs().max() / expected.abs().max()).item() < 1e-6


def test_saturating_activations_stay_exact_in_the_dense_3_bit_kernel(ext):
    """Every code 7 against activations of -127: the largest int16 partial sums of the AVX2 kernel."""
    N, K, g = 16, 64, 32
    codes = torch.full((N, K), 7, dtype=torch.uint8)
    scales, zeros = torch.ones(N, K // g).half(), torch.zeros(N, K // g, dtype=torch.uint8)
    x = -torch.ones(1, K)
    w = pack_native(codes, scales, zeros, bits=3)
    got = ext.Linear(w.lines, w.meta, None, N, K, g, 1).forward(x)
    assert torch.equal(got, torch.full((1, N), -7.0 * K))          # 7 * 127 * (1/127) per weight, exactly


def test_best_isa_is_what_the_cpu_reports():
    assert native_build.best_isa() == ISAS[0]


def test_bad_layout_is_refused_with_a_message(ext):
    codes, scales, zeros = random_weights(16, 64, 32)
    w = pack_native(codes, scales, zeros)
    with pytest.raises(RuntimeError, match="lines has"):
        ext.Linear(w.lines.flatten()[:64].clone(), w.meta, None, 16, 64, 32, 1)


def _openmp_library_of(path: str) -> str:
    """The file that provides omp_get_thread_num to the loaded shared object `path` (its own dependency lookup)."""
    class DlInfo(ctypes.Structure):
        _fields_ = [("fname", ctypes.c_char_p), ("fbase", ctypes.c_void_p), ("sname", ctypes.c_char_p),
                    ("saddr", ctypes.c_void_p)]

    address = ctypes.cast(ctypes.CDLL(path).omp_get_thread_num, ctypes.c_void_p)
    info = DlInfo()
    assert ctypes.CDLL(None).dladdr(address, ctypes.byref(info))
    return os.path.realpath(info.fname.decode())


def test_kernels_share_pytorchs_openmp_runtime(ext):
    """The kernels' parallel loops run on PyTorch's OpenMP runtime (one team of threads, none spinning against
    another), whatever other libraries bring their own copy."""
    torch_cpu = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    assert _openmp_library_of(ext.__file__) == _openmp_library_of(torch_cpu)
