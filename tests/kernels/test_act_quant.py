"""int8 activation quantization (kernels/act_quant.py) and W8A8 QLinearPerGrp against direct arithmetic."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from edgeawq.kernels.act_quant import activation_codes, fake_quantize_activations
from edgeawq.kernels.qlinear import QLinearPerGrp
from edgeawq.kernels.quantizer import QuantSpec, quantize

W8_CHANNEL = QuantSpec(8, -1, zero_point=False)


def test_per_token_codes_are_row_maxima_over_127_rounded_half_to_even():
    x = torch.tensor([[1.27, -0.635, 0.3175, 0.0], [0.0, 0.0, 0.0, 0.0], [-2.0, 1.0, 0.5, 0.25]])
    q, s = activation_codes(x, "per_token")
    assert s.shape == (3, 1)
    assert torch.equal(s[:, 0], torch.tensor([1.27 / 127, 0.0, 2.0 / 127], dtype=torch.float32))
    inv = 1.0 / s[0, 0]
    assert torch.equal(q[0], torch.round(x[0] * inv))                   # x * (1/s), as the native kernel
    assert q[0, 0] == 127 and q[2, 0] == -127 and q.abs().max() <= 127
    assert torch.equal(q[1], torch.zeros(4))                              # an all-zero row: codes 0, no NaN
    half = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5]])                 # s = 1: exact halves
    assert torch.equal(activation_codes(half, "per_token")[0], torch.tensor([[127.0, 0.0, 2.0, 2.0, -0.0]]))


def test_per_tensor_codes_use_the_static_scale_and_clamp():
    x = torch.tensor([[0.5, -3.0, 1.0], [10.0, -10.0, 0.01]])
    scale = torch.tensor([1.0 / 127])                                    # calibrated maximum 1.0
    q, s = activation_codes(x, "per_tensor", scale)
    assert torch.equal(s, scale)
    assert torch.equal(q, torch.tensor([[64.0, -127.0, 127.0], [127.0, -127.0, 1.0]]))   # 63.5 -> 64 (even)
    with pytest.raises(ValueError):
        activation_codes(x, "per_tensor")
    with pytest.raises(ValueError):
        activation_codes(x, "per_channel")


@pytest.mark.parametrize("mode", ["per_token", "per_tensor"])
def test_w8a8_linear_is_the_int8_product_rescaled(mode):
    torch.manual_seed(0)
    w, b = torch.randn(24, 64), torch.randn(24)
    x = torch.randn(3, 5, 64) * 2
    qw = quantize(w, W8_CHANNEL)
    scale = torch.tensor([float(x.abs().max()) * 0.8 / 127])            # some inputs clamp
    lin = QLinearPerGrp.from_quantized(qw, b, act_quant=mode, act_scale=scale if mode == "per_tensor" else None)
    q, s = activation_codes(x, mode, lin.act_scale)
    codes = qw.codes.to(torch.int64) - 128                               # (N, K) symmetric int8 weights
    acc = q.to(torch.int64) @ codes.t()                                  # exact int products
    expected = acc.double() * s.double() * qw.scales.double().reshape(-1) + b.double()
    assert torch.allclose(lin(x).double(), expected, rtol=1e-5, atol=1e-5)
    assert torch.allclose(lin(x), F.linear(fake_quantize_activations(x, mode, lin.act_scale), qw.dequantize(), b))
    assert lin(x.to(torch.bfloat16)).dtype == torch.bfloat16
    assert "int8 " + mode in repr(lin)


def test_concat_rows_keeps_the_shared_input_quantization():
    torch.manual_seed(1)
    parts = [QLinearPerGrp.from_quantized(quantize(torch.randn(n, 32), W8_CHANNEL), None, act_quant="per_tensor",
                                          act_scale=torch.tensor([0.02])) for n in (8, 16)]
    fused = QLinearPerGrp.concat_rows(parts)
    x = torch.randn(4, 32)
    assert fused.act_quant == "per_tensor" and torch.equal(fused.act_scale, torch.tensor([0.02]))
    assert torch.allclose(fused(x), torch.cat([p(x) for p in parts], -1), rtol=1e-6, atol=1e-6)
    parts[1].act_scale = torch.tensor([0.03])
    with pytest.raises(ValueError):
        QLinearPerGrp.concat_rows(parts)
