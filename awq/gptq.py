"""GPTQ rounding of one Linear weight given the Hessian of its layer-wise loss (docs/quantization.md (GPTQ)).

The loss is ||X W^T - X W_hat^T||^2 over the calibration inputs X (tokens, K); its Hessian is H = 2 X^T X / tokens
(K, K). Columns (input channels) are quantized one at a time, in order (or, with `act_order`, by decreasing
diag(H)); the rounding error of column p, divided by [H^-1]_pp, is spread over the columns not yet quantized
along row p of H^-1 (the optimal-brain-quantization update), and H^-1 then loses column p. As in the GPTQ paper
this is computed with the upper Cholesky factor U of (H + damp I)^-1, whose row p is row p of the eliminated
inverse divided by its square root, with updates applied lazily block by block (`block` columns).

Grid: the toolkit's per-group asymmetric or symmetric grid (kernels/quantizer.py, fp16 scales). Without
act_order a group's scale and zero point are set from the group's current (already error-updated) weights when
its first column is reached. With act_order the groups are fixed from the original weights first ("static
groups"), so every group stays a run of g consecutive input channels and the checkpoint needs no g_idx.
Columns whose Hessian diagonal is 0 (never-active inputs) are set to 0 before rounding.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UserError
from ..kernels.quantizer import QuantizedWeight, QuantSpec, codes_on_grid, group_grid


@dataclass
class GptqOptions:
    damp: float = 0.01          # damping, a fraction of mean(diag(H)) added to the diagonal
    act_order: bool = False     # quantize columns by decreasing diag(H) (static groups)
    block: int = 128            # columns per lazy-update block (rounded up to a multiple of the group size)


class HessianAccumulator:
    """Running H = 2 X^T X / tokens of one Linear's input, float32 (K, K)."""

    def __init__(self, K: int) -> None:
        self.sum = torch.zeros(K, K)
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()                             # (tokens, K)
        self.sum.addmm_(x.T, x)
        self.tokens += x.shape[0]

    def hessian(self) -> torch.Tensor:
        return self.sum * (2.0 / max(self.tokens, 1))


def _inverse_factor(H: torch.Tensor, damp: float, layer: str) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp * mean(diag H) * I)^-1 (K, K)."""
    K = H.shape[0]
    H = H + damp * torch.mean(torch.diag(H)) * torch.eye(K, dtype=H.dtype)
    L, info = torch.linalg.cholesky_ex(H)
    if info.item():
        raise UserError(f"GPTQ cannot factor the Hessian of {layer or 'a layer'}: it is not positive definite at "
                        f"damping {damp}.", "Pass a larger --gptq_damp (e.g. 0.1), or more calibration data.")
    return torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)


@torch.no_grad()
def gptq_quantize(w: torch.Tensor, H: torch.Tensor, spec: QuantSpec, options: GptqOptions, layer: str = "",
                  dtype: torch.dtype = torch.float32) -> QuantizedWeight:
    """GPTQ-quantize weight `w` (N, K) with the input Hessian `H` (K, K); the arithmetic runs in `dtype`.
    -> QuantizedWeight (codes in the original column order, per-group fp16 scales and zero points)."""
    N, K = w.shape
    g = spec.group(K, layer)
    W = w.detach().to(dtype).clone()                                       # (N, K)
    H = H.to(dtype).clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    scales = torch.empty(N, K // g, dtype=dtype)
    zeros = torch.empty(N, K // g, dtype=dtype)
    if options.act_order:
        s, z = group_grid(W.view(N, K // g, g), spec)                      # (N, G) x2, from the original weights
        scales[:], zeros[:] = s, z
        perm = torch.argsort(torch.diag(H), descending=True, stable=True)
    else:
        perm = torch.arange(K)
    W, H = W[:, perm], H[perm][:, perm]
    U = _inverse_factor(H, options.damp, layer)                            # (K, K) upper
    del H
    codes = torch.empty(N, K, dtype=dtype)                                 # permuted column order
    block = max(options.block, g) if g < K else options.block
    block = -(-block // g) * g if g < K else block
    for i1 in range(0, K, block):
        i2 = min(i1 + block, K)
        W1 = W[:, i1:i2].clone()                                           # (N, B) current weights of the block
        E1 = torch.zeros_like(W1)                                          # (N, B) scaled errors
        U1 = U[i1:i2, i1:i2]
        for j in range(i2 - i1):
            c = int(perm[i1 + j])                                          # original column
            grp = c // g
            if not options.act_order and c % g == 0:
                cur = W[:, i1:i1 + g] if j == 0 else W1[:, j:j + g]        # the group's current weights (N, g)
                s, z = group_grid(cur, spec)
                scales[:, grp], zeros[:, grp] = s.to(dtype), z.to(dtype)
            s, z = scales[:, grp], zeros[:, grp]                           # (N,)
            q = codes_on_grid(W1[:, j], s, z, spec.bits)                           # (N,)
            codes[:, i1 + j] = q
            err = (W1[:, j] - (q - z) * s) / U1[j, j]                      # (N,)
            W1[:, j:] -= err[:, None] * U1[j, j:][None, :]
            E1[:, j] = err
        W[:, i2:] -= E1 @ U[i1:i2, i2:]
    out = torch.empty_like(codes)
    out[:, perm] = codes
    return QuantizedWeight(out.to(torch.uint8), scales.to(torch.float16), zeros.to(torch.uint8), spec)
