"""Math-fidelity emulation: HiFi4 + fp32 accumulation is exact on block-float/bf16 operands; error order."""
from __future__ import annotations

import pytest
import torch

from edgeawq.tt_backend.blockfloat import round_trip
from edgeawq.tt_backend.fidelity import fidelity_matmul, split_operand, truncate_mantissa


def test_truncation_masks_bits_and_flushes_denormals():
    x = torch.tensor([1.0 + 2 ** -1 + 2 ** -5 + 2 ** -9, -3.96875, 1e-40, -1e-40])
    assert truncate_mantissa(x, 4)[:2].tolist() == [1.5, -3.875]
    assert truncate_mantissa(x, 9)[0].item() == 1.0 + 2 ** -1 + 2 ** -5 + 2 ** -9
    assert truncate_mantissa(x, 9)[2:].tolist() == [0.0, -0.0]
    hi, lo = split_operand(x[:1], 4, 5)
    assert hi.item() == 1.5 and lo.item() == 2 ** -5 + 2 ** -9


def test_hifi4_fp32_equals_fp32_matmul_of_decoded_operands():
    torch.manual_seed(0)
    w = round_trip(torch.randn(256, 96), 8)                      # bfloat8_b weights, decoded
    x = torch.randn(7, 256).to(torch.bfloat16).float()           # bf16 activations
    got = fidelity_matmul(x, w, "HiFi4", fp32_dest_acc=True)
    ref = x @ w                                                   # plain fp32 matmul
    assert ((got - ref).norm() / ref.norm()).item() <= 1e-6


def test_error_grows_as_fidelity_drops():
    torch.manual_seed(1)
    w = torch.randn(512, 64)
    x = torch.randn(16, 512)
    ref = x.double() @ w.double()
    err = {f: (fidelity_matmul(x, w, f).double() - ref).pow(2).mean().item() for f in ("LoFi", "HiFi2", "HiFi4")}
    assert err["LoFi"] > err["HiFi2"] > err["HiFi4"]
    hifi3 = (fidelity_matmul(x, w, "HiFi3").double() - ref).pow(2).mean().item()
    assert err["HiFi2"] > hifi3 >= err["HiFi4"]


def test_bf16_accumulation_rounds_per_16_chunk():
    x = torch.ones(1, 32)
    w = torch.full((32, 1), 1.0 + 2 ** -9)  # 9 mantissa bits survive SrcA, but not a bf16 accumulator
    fp32 = fidelity_matmul(x, w, "HiFi4", fp32_dest_acc=True).item()
    bf16 = fidelity_matmul(x, w, "HiFi4", fp32_dest_acc=False).item()
    assert fp32 == 32 * (1.0 + 2 ** -9) and bf16 == 32.0


def test_unknown_fidelity():
    with pytest.raises(ValueError, match="HiFi"):
        fidelity_matmul(torch.ones(1, 16), torch.ones(16, 1), "HiFi5")


def test_srca_shares_exact_weights_and_builds_hi_only_when_asked():
    from edgeawq.tt_backend.fidelity import SrcA, fidelity_matmul_srca

    w = round_trip(torch.randn(64, 32), 8)
    a = SrcA.of(w, need_hi=False)
    assert a.full.data_ptr() == w.data_ptr() and a.hi is None          # block-float values fit in 9 bits: no copy
    x = torch.randn(3, 64)
    assert torch.equal(fidelity_matmul_srca(x, a, "HiFi2"), fidelity_matmul(x, w, "HiFi2"))
    with pytest.raises(ValueError, match="needs SrcA.hi"):
        fidelity_matmul_srca(x, a, "LoFi")
    odd = torch.full((16, 1), 1.0 + 2 ** -12)                           # 12 mantissa bits: truncated copy
    assert SrcA.of(odd).full[0, 0].item() == 1.0
