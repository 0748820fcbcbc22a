"""AWQ activation-aware scale search for one scaling group (llm-awq semantics, docs/quantization.md (AWQ)).

x_bar = mean(|x|) per input channel over all calibration tokens. For alpha in {0, 1/n_grid, ..., 1 - 1/n_grid}:
    s = x_bar**alpha                                   (duo_scaling: x_bar**alpha / (w_bar**(1-alpha) + 1e-4))
    s = s.clamp(min=1e-4); s = s / sqrt(s.max() * s.min())
    for every Linear of the group: W <- Q(W * s) / s   (Q = per-group fake quantization)
    loss = mean squared error of the inspected module's output vs its float output
The best s is returned; the weights are restored. alpha = 0 gives s = 1, plain RTN, so the chosen scales are
never worse than RTN on this objective.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..kernels.quantizer import QuantSpec, fake_quantize


@dataclass
class ScaleResult:
    scales: torch.Tensor          # (K,) float32
    alpha: float
    loss: float
    rtn_loss: float               # the loss at alpha = 0


def weight_importance(linears: list[nn.Linear], spec: QuantSpec) -> torch.Tensor:
    """w_bar for duo scaling: per input channel, mean of |W| normalised by its group's absmax. -> (K,)"""
    w = torch.cat([lin.weight.detach().float() for lin in linears], dim=0)   # (sum N, K)
    N, K = w.shape
    g = spec.group(K)
    wg = w.abs().view(N, K // g, g)
    return (wg / (wg.amax(dim=-1, keepdim=True) + 1e-6)).view(N, K).mean(dim=0)


@torch.no_grad()
def search_scales(x_chunks: list[torch.Tensor], linears: list[nn.Linear], inspect: Callable[[torch.Tensor, int], torch.Tensor],
                  spec: QuantSpec, names: list[str], n_grid: int = 20, duo_scaling: bool = False) -> ScaleResult:
    """x_chunks: the group's input in chunks (..., K); inspect(x_chunk, chunk_index) -> module output."""
    K = x_chunks[0].shape[-1]
    count = sum(c.numel() // K for c in x_chunks)
    x_bar = sum(c.abs().reshape(-1, K).float().sum(dim=0) for c in x_chunks) / count         # (K,)
    w_bar = weight_importance(linears, spec) if duo_scaling else None
    reference = [inspect(c, i).float() for i, c in enumerate(x_chunks)]
    originals = [lin.weight.detach().clone() for lin in linears]
    best: ScaleResult | None = None
    rtn_loss = float("nan")
    for step in range(n_grid):
        alpha = step / n_grid
        s = x_bar.pow(alpha) if w_bar is None else x_bar.pow(alpha) / (w_bar.pow(1 - alpha) + 1e-4)
        s = s.clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        for lin, w0, name in zip(linears, originals, names):
            lin.weight.copy_((fake_quantize(w0.float() * s, spec, name) / s).to(w0.dtype))
        sq, n = 0.0, 0
        for i, c in enumerate(x_chunks):
            diff = inspect(c, i).float() - reference[i]
            sq += float(diff.pow(2).sum())
            n += diff.numel()
        loss = sq / n
        if step == 0:
            rtn_loss = loss
        if best is None or loss < best.loss:
            best = ScaleResult(s.clone(), alpha, loss, rtn_loss)
    for lin, w0 in zip(linears, originals):
        lin.weight.copy_(w0)
    best.rtn_loss = rtn_loss
    return best
