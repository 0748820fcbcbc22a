"""Per-group quantizer: the formulas of docs/quantization.md, error bounds, symmetric mode, and shape errors."""
from __future__ import annotations

import pytest
import torch

from edgeawq.errors import UserError
from edgeawq.kernels.quantizer import QuantSpec, fake_quantize, quantize


def sqnr_db(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(20 * torch.log10(x.norm() / (x - y).norm()))


def oracle_asym(w, bits, g):
    """Scalar-loop transcription of the docs/quantization.md formulas (fp16-rounded scale)."""
    N, K = w.shape
    qmax = 2 ** bits - 1
    out = torch.empty_like(w)
    for n in range(N):
        for j in range(0, K, g):
            grp = w[n, j:j + g]
            s = float(torch.tensor(max(float(grp.max()) - float(grp.min()), 1e-5) / qmax).to(torch.float16))
            z = min(max(-round(float(grp.min()) / s), 0), qmax)
            for k in range(g):
                q = min(max(round(float(grp[k]) / s) + z, 0), qmax)
                out[n, j + k] = (q - z) * s
    return out


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_asymmetric_matches_the_formula(bits):
    torch.manual_seed(bits)
    w = torch.randn(3, 64)
    assert torch.allclose(fake_quantize(w, QuantSpec(bits, 32)), oracle_asym(w, bits, 32), atol=1e-6, rtol=0)


@pytest.mark.parametrize("bits,min_db", [(2, 4), (3, 11), (4, 17), (8, 40)])
@pytest.mark.parametrize("group", [32, 64, 128, 256, -1])
def test_error_is_bounded_and_shrinks_with_bits(bits, min_db, group):
    torch.manual_seed(0)
    w = torch.randn(64, 512)
    qw = quantize(w, QuantSpec(bits, group))
    w_hat = qw.dequantize()
    g = 512 if group == -1 else group
    assert qw.scales.shape == (64, 512 // g) and int(qw.codes.max()) < 2 ** bits
    step = qw.scales.float().repeat_interleave(g, dim=1)
    # half a step inside the range; up to one step at the ends, where the rounded zero point shifts the grid
    assert ((w - w_hat).abs() <= step * 1.01).all()
    assert ((w - w_hat).abs() <= step / 2 + 1e-6).float().mean() > 0.9
    assert sqnr_db(w, w_hat) > min_db


def test_smaller_groups_and_more_bits_are_more_accurate():
    torch.manual_seed(2)
    w = torch.randn(64, 512)
    by_group = [sqnr_db(w, fake_quantize(w, QuantSpec(4, g))) for g in (32, 64, 128, 256, -1)]
    assert by_group == sorted(by_group, reverse=True)
    by_bits = [sqnr_db(w, fake_quantize(w, QuantSpec(b, 128))) for b in (2, 3, 4, 8)]
    assert by_bits == sorted(by_bits)


def test_symmetric_mode():
    torch.manual_seed(1)
    w = torch.randn(8, 128)
    qw = quantize(w, QuantSpec(4, 128, zero_point=False))
    assert (qw.zeros == 8).all()
    codes = qw.codes.int() - 8
    assert codes.min() >= -8 and codes.max() <= 7
    s = (w.abs().amax(dim=1, keepdim=True) / 7).half().float()
    assert torch.equal(qw.dequantize(), (torch.round(w / s).clamp(-8, 7)) * s)


def test_k_not_multiple_of_group_names_layer():
    with pytest.raises(UserError, match=r"layer model.layers.0.mlp.down_proj: its input size K=100 .* g=64"):
        quantize(torch.randn(4, 100), QuantSpec(4, 64), "model.layers.0.mlp.down_proj")


def test_unsupported_bits_and_group():
    with pytest.raises(UserError, match="5-bit"):
        QuantSpec(5, 128).validate()
    with pytest.raises(UserError, match="Group size 48"):
        QuantSpec(4, 48).validate()


def test_constant_group_does_not_divide_by_zero():
    w = torch.zeros(2, 32)
    assert torch.equal(fake_quantize(w, QuantSpec(4, 32)), w)
