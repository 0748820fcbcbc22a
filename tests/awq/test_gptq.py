"""GPTQ (awq/gptq.py) against a direct implementation of the optimal-brain-quantization update."""
import pytest
import torch

from edgeawq.awq.gptq import GptqOptions, HessianAccumulator, gptq_quantize
from edgeawq.errors import UserError
from edgeawq.kernels.quantizer import QuantSpec, codes_on_grid, group_grid, quantize


def obq_reference(w, H, spec, damp, act_order):
    """Column by column with the explicit inverse Hessian, eliminated after every column; float64; groups set
    from the current weights at their first column (or, with act_order, from the original weights)."""
    N, K = w.shape
    g = spec.group(K)
    W = w.double().clone()
    H = H.double().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    s = torch.empty(N, K // g, dtype=torch.float64)
    z = torch.empty_like(s)
    if act_order:
        s0, z0 = group_grid(W.view(N, K // g, g), spec)
        s[:], z[:] = s0, z0
        order = torch.argsort(torch.diag(H), descending=True, stable=True).tolist()
    else:
        order = list(range(K))
    Hinv = torch.linalg.inv(H + damp * torch.diag(H).mean() * torch.eye(K, dtype=torch.float64))
    codes = torch.empty(N, K, dtype=torch.float64)
    todo = torch.ones(K, dtype=torch.bool)
    for c in order:
        if not act_order and c % g == 0:
            s0, z0 = group_grid(W[:, c:c + g], spec)
            s[:, c // g], z[:, c // g] = s0, z0
        q = codes_on_grid(W[:, c], s[:, c // g], z[:, c // g], spec.bits)
        codes[:, c] = q
        err = (W[:, c] - (q - z[:, c // g]) * s[:, c // g]) / Hinv[c, c]
        todo[c] = False
        W[:, todo] -= err[:, None] * Hinv[c, todo][None, :]
        W[:, c] = (q - z[:, c // g]) * s[:, c // g]
        Hinv = Hinv - Hinv[:, c:c + 1] @ Hinv[c:c + 1, :] / Hinv[c, c]
    return codes.to(torch.uint8), s.half(), z.to(torch.uint8)


def _layer(seed=0, N=12, K=96, tokens=400):
    gen = torch.Generator().manual_seed(seed)
    mix = torch.eye(K) + 0.3 * torch.randn(K, K, generator=gen)                  # correlated channels, as real
    X = (torch.randn(tokens, K, generator=gen) @ mix) * torch.linspace(0.2, 3.0, K)   # activations; uneven energies
    X[:, 5] = 0                                                                   # a dead input channel
    w = torch.randn(N, K, generator=gen) * 0.1
    acc = HessianAccumulator(K)
    for part in X.split(128):
        acc.add(part[None])
    return w, X, acc.hessian()


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("spec", [QuantSpec(4, 32), QuantSpec(3, 32, zero_point=False), QuantSpec(4, -1)])
def test_blocked_cholesky_gptq_equals_the_direct_obq_update(spec, act_order):
    w, _, H = _layer()
    options = GptqOptions(damp=0.01, act_order=act_order, block=64)
    got = gptq_quantize(w, H, spec, options, dtype=torch.float64)
    codes, s, z = obq_reference(w, H, spec, 0.01, act_order)
    assert torch.equal(got.scales, s) and torch.equal(got.zeros, z)
    assert torch.equal(got.codes, codes)
    assert torch.all(got.codes[:, 5] == got.zeros[:, 0])       # the dead channel is rounded as a zero weight


def test_hessian_is_twice_the_mean_outer_product():
    _, X, H = _layer()
    assert torch.allclose(H, 2 * X.T @ X / X.shape[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_lowers_the_layer_output_error_below_round_to_nearest(act_order):
    w, X, H = _layer(seed=1, N=64, K=256, tokens=2000)
    spec = QuantSpec(3, 64)
    rtn = quantize(w, spec).dequantize()
    gptq = gptq_quantize(w, H, spec, GptqOptions(act_order=act_order)).dequantize()
    err = lambda wq: ((X @ (w - wq).T) ** 2).mean().item()
    print(f"act_order={act_order}: output error gptq {err(gptq):.3e} vs rtn {err(rtn):.3e}")
    assert err(gptq) < 0.85 * err(rtn)


def test_a_singular_hessian_without_damping_is_a_clear_error():
    w, _, H = _layer()
    H = torch.ones_like(H)                                  # rank one
    with pytest.raises(UserError, match="--gptq_damp"):
        gptq_quantize(w, H, QuantSpec(4, 32), GptqOptions(damp=0.0))
