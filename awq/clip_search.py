"""AWQ weight clipping search (llm-awq semantics, docs/quantization.md (AWQ)).

For every (output row, group) try max_val = absmax * (1 - i/n_grid), i = 0 .. max_shrink*n_grid - 1; clamp
the group to [-max_val, max_val], fake-quantize, and keep the max_val with the smallest mean squared error of the
group's partial dot products sum_k x[t, k] * w[n, k] over up to `n_tokens` calibration tokens (evenly strided).
"""
from __future__ import annotations

import torch

from ..kernels.quantizer import QuantSpec, fake_quantize


@torch.no_grad()
def search_clip(w: torch.Tensor, x: torch.Tensor, spec: QuantSpec, name: str = "", n_grid: int = 20,
                max_shrink: float = 0.5, n_tokens: int = 512, rows_per_batch: int = 256) -> torch.Tensor:
    """w (N, K) float weight, x (..., K) its input -> max_val (N, G) float32."""
    N, K = w.shape
    g = spec.group(K, name)
    G = K // g
    x = x.reshape(-1, K).float()
    x = x[:: max(1, x.shape[0] // n_tokens)][:n_tokens]                        # (t, K)
    xg = x.view(-1, G, g).transpose(0, 1)                                      # (G, t, g)
    best = torch.empty(N, G)
    for r0 in range(0, N, rows_per_batch):
        wb = w[r0:r0 + rows_per_batch].float()                                 # (n, K)
        n = wb.shape[0]
        wgrp = wb.view(n, G, g)                                                # (n, G, g)
        org_max = wgrp.abs().amax(dim=-1, keepdim=True)                        # (n, G, 1)
        org_out = torch.bmm(xg, wgrp.permute(1, 2, 0))                         # (G, t, n)
        min_err = torch.full((n, G), float("inf"))
        best_max = org_max.squeeze(-1).clone()
        for i in range(int(max_shrink * n_grid)):
            max_val = org_max * (1 - i / n_grid)
            cur = torch.maximum(torch.minimum(wgrp, max_val), -max_val)
            q = fake_quantize(cur.reshape(n, K), spec, name).view(n, G, g)
            out = torch.bmm(xg, q.permute(1, 2, 0))                            # (G, t, n)
            err = (out - org_out).pow(2).mean(dim=1).t()                       # (n, G)
            better = err < min_err
            min_err = torch.where(better, err, min_err)
            best_max = torch.where(better, max_val.squeeze(-1), best_max)
        best[r0:r0 + n] = best_max
    return best


def apply_clip(weight: torch.Tensor, max_val: torch.Tensor) -> None:
    """In place: clamp each (row, group) of weight (N, K) to [-max_val, max_val], max_val (N, G)."""
    N, K = weight.shape
    G = max_val.shape[1]
    wg = weight.data.view(N, G, K // G)
    m = max_val.to(weight.dtype).unsqueeze(-1)
    wg.copy_(torch.maximum(torch.minimum(wg, m), -m))
