"""QLinearPerGrp: the custom op equals F.linear with the dequantized weight; registration is sound."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from edgeawq.kernels.formats import unpack
from edgeawq.kernels.qlinear import QLinearPerGrp
from edgeawq.kernels.quantizer import QuantSpec, fake_quantize


def sqnr_db(x, y):
    return float(20 * torch.log10(x.norm() / (x - y).norm()))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group", [32, 128, -1])
@pytest.mark.parametrize("shape", [(1, 1, 256), (2, 7, 256), (5, 512)])
@pytest.mark.parametrize("act", [torch.float32, torch.bfloat16, torch.float16])
def test_output_equals_linear_with_dequantized_weight(bits, group, shape, act):
    torch.manual_seed(bits + len(shape))
    lin = torch.nn.Linear(shape[-1], 96, bias=True)
    q = QLinearPerGrp.from_float(lin, QuantSpec(bits, group), act_dtype=act)
    x = torch.randn(*shape)
    w_hat = fake_quantize(lin.weight.detach(), QuantSpec(bits, group))
    expected = F.linear(x.to(act), w_hat.to(act), lin.bias.detach().to(act)).float()
    got = q(x)
    assert got.dtype == x.dtype and got.shape == (*shape[:-1], 96)
    assert torch.equal(q.dequantized_weight(), w_hat)
    assert torch.allclose(got, expected, atol=1e-5 if act == torch.float32 else 1e-2, rtol=0)
    if bits >= 4:
        assert sqnr_db(F.linear(x, lin.weight.detach(), lin.bias.detach()), got) > (13 if bits == 4 else 30)


def test_repr_shows_bits_group_and_activation_dtype():
    q = QLinearPerGrp.from_float(torch.nn.Linear(256, 64), QuantSpec(3, 64))
    assert "bits=3" in repr(q) and "group_size=64" in repr(q) and "act=bf16" in repr(q)
    assert q.packed.shape == (64, 128)  # 3-bit codes in the 4-bit container


def test_custom_op_registration_passes_opcheck():
    q = QLinearPerGrp.from_float(torch.nn.Linear(128, 32), QuantSpec(4, 32), act_dtype=torch.float32)
    x = torch.randn(3, 128)
    torch.library.opcheck(torch.ops.edgeawq.qlinear_pergrp.default,
                          (x, q.packed, q.scales, q.zeros, q.bias, 4, torch.float32))


def test_fake_implementation_gives_shapes_on_meta():
    q = QLinearPerGrp.from_float(torch.nn.Linear(128, 32, bias=False), QuantSpec(4, 32))
    x = torch.empty(2, 5, 128, device="meta")
    out = torch.ops.edgeawq.qlinear_pergrp(x, q.packed.to("meta"), q.scales.to("meta"), q.zeros.to("meta"), None,
                                           4, torch.bfloat16)
    assert out.shape == (2, 5, 32) and out.device.type == "meta"


def test_aie_numerics_follow_the_ryzen_ai_kernel():
    """bf16 activations and scales, bf16 weights (code - zero) * scale, fp32 accumulation, bf16 output."""
    from edgeawq.kernels.qlinear import aie_linear

    gen = torch.Generator().manual_seed(3)
    lin = torch.nn.Linear(256, 64, bias=True)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(64, 256, generator=gen))
    q = QLinearPerGrp.from_float(lin, QuantSpec(4, 128), torch.float32)
    x = torch.randn(3, 256, generator=gen)
    codes = unpack(q.packed, "u4k").float().view(64, 2, 128)
    w = ((codes - q.zeros.float()[..., None]) * q.scales.to(torch.bfloat16).float()[..., None]).to(torch.bfloat16)
    acc = x.to(torch.bfloat16).double() @ w.view(64, 256).double().T + q.bias.double()     # exact sums
    expected = acc.float().to(torch.bfloat16).float()
    got = aie_linear(x, q.packed, q.scales, q.zeros, q.bias, 4)
    assert got.dtype == x.dtype
    # fp32 accumulation vs exact sums: at most one bf16 rounding step apart
    assert ((got - expected).abs() <= expected.abs() * 2 ** -7 + 1e-6).all()
    q.numerics = "aie"
    assert torch.equal(q(x), got) and "act=aie" in repr(q)
    reference = q.dequantized_weight() @ x.T
    assert not torch.equal(got, (reference.T + q.bias))                  # a different, emulated numerics


def test_load_model_with_aie_numerics(checkpoints, tmp_path):
    from edgeawq.runtime.model_loader import load_model

    from ..conftest import quantize_tiny

    quantize_tiny(checkpoints["llama2"], tmp_path / "q", awq_mode="none", algorithm="pergrp")
    model = load_model(tmp_path / "q", "fp32", "aie").model
    numerics = {m.numerics for m in model.modules() if isinstance(m, QLinearPerGrp)}
    assert numerics == {"aie"}
