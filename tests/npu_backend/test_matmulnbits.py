"""MatMulNBits packing: an independent reader recovers our dequantized weights exactly, and ONNX Runtime's own
MatMulNBits kernel computes F.linear with them."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper

from edgeawq.errors import UserError
from edgeawq.kernels.quantizer import QuantSpec, dequantize, quantize
from edgeawq.npu_backend.matmulnbits import dequantize_matmulnbits, to_matmulnbits


def _quantized(bits, group, N=48, K=256, seed=0):
    w = torch.randn(N, K, generator=torch.Generator().manual_seed(seed))
    return quantize(w, QuantSpec(bits, group))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group", [32, 64, 128, 256])
def test_packed_weights_dequantize_exactly(bits, group):
    qw = _quantized(bits, group)
    packed = to_matmulnbits(qw.codes, qw.scales, qw.zeros, bits)
    assert packed.bits == (4 if bits <= 4 else 8) and packed.block_size == group
    assert packed.B.shape == (48, 256 // group, group * packed.bits // 8)
    assert torch.equal(dequantize_matmulnbits(packed), dequantize(qw.codes, qw.scales, qw.zeros))


def test_odd_block_count_pads_zero_points():
    qw = quantize(torch.randn(8, 96), QuantSpec(4, 32))       # 3 blocks -> 2 zero-point bytes per row
    packed = to_matmulnbits(qw.codes, qw.scales, qw.zeros, 4)
    assert packed.zero_points.shape == (8, 2)
    assert torch.equal(dequantize_matmulnbits(packed), dequantize(qw.codes, qw.scales, qw.zeros))


def test_group_that_is_not_a_power_of_two_is_refused():
    qw = quantize(torch.randn(8, 96), QuantSpec(4, -1))       # one group of 96
    with pytest.raises(UserError, match="power of two"):
        to_matmulnbits(qw.codes, qw.scales, qw.zeros, 4, where="layers.0.mlp.down_proj")


def _run_matmulnbits(packed, x: np.ndarray, accuracy_level: int) -> np.ndarray:
    inits = [helper.make_tensor("B", TensorProto.UINT8, packed.B.shape, packed.B.tobytes(), raw=True),
             helper.make_tensor("scales", TensorProto.FLOAT, packed.scales.shape, packed.scales.ravel()),
             helper.make_tensor("zp", TensorProto.UINT8, packed.zero_points.shape, packed.zero_points.tobytes(),
                                raw=True)]
    node = helper.make_node("MatMulNBits", ["A", "B", "scales", "zp"], ["Y"], domain="com.microsoft", K=packed.K,
                            N=packed.N, bits=packed.bits, block_size=packed.block_size,
                            accuracy_level=accuracy_level)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [None, packed.K])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, packed.N])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                    helper.make_opsetid("com.microsoft", 1)], ir_version=10)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"A": x})[0]


@pytest.mark.parametrize("bits,group", [(4, 32), (4, 128), (3, 64), (8, 128)])
def test_onnxruntime_kernel_matches_reference_linear(bits, group):
    qw = _quantized(bits, group)
    packed = to_matmulnbits(qw.codes, qw.scales, qw.zeros, bits)
    x = torch.randn(5, 256, generator=torch.Generator().manual_seed(1))
    expected = F.linear(x, dequantize(qw.codes, qw.scales, qw.zeros))
    exact = torch.from_numpy(_run_matmulnbits(packed, x.numpy(), accuracy_level=0))
    assert (exact - expected).abs().max().item() <= 1e-4 * expected.abs().max().item()
    int8 = torch.from_numpy(_run_matmulnbits(packed, x.numpy(), accuracy_level=4))  # int8 activations per block
    assert torch.corrcoef(torch.stack([int8.flatten(), expected.flatten()]))[0, 1].item() >= 0.999


def test_group_minimums_as_centred_zero_points_plus_a_residual():
    """GGUF Q4_1 weights (code * scale + min): exact with fp32 activations, and under int8 activation blocks
    (accuracy_level 4) closer to the reference than putting the whole minimum in the fp32 correction."""
    from edgeawq.npu_backend.graph_builder import centre_group_mins

    g, N, K = 32, 48, 256
    gen = torch.Generator().manual_seed(3)
    codes = torch.randint(0, 16, (N, K), generator=gen, dtype=torch.uint8)
    scales = (torch.rand(N, K // g, generator=gen) * 0.02 + 0.005).half()
    mins = (-scales.float() * (7 + torch.rand(N, K // g, generator=gen))).half()        # about -7.5 steps
    x = torch.randn(5, K, generator=gen)
    expected = F.linear(x, dequantize(codes, scales, torch.zeros_like(codes[:, ::g]), torch.float32, mins))
    sums = x.reshape(5, K // g, g).sum(-1)                                               # (5, G)

    def run(zeros, shift, level):
        packed = to_matmulnbits(codes, scales, zeros, 4)
        return torch.from_numpy(_run_matmulnbits(packed, x.numpy(), level)) + sums @ shift.t()

    z, residual = centre_group_mins(scales, mins, 4)
    assert residual.abs().max() <= 0.5 * scales.float().max() + 1e-6
    assert (run(z, residual, 0) - expected).abs().max() <= 1e-4 * expected.abs().max()
    centred = (run(z, residual, 4) - expected).norm()
    whole = (run(torch.zeros_like(z), mins.float(), 4) - expected).norm()
    assert centred < 0.75 * whole, (centred, whole)            # measured 0.099 vs 0.156
