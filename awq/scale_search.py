"""AWQ activation-aware scale search for one scaling group (llm-awq semantics, docs/quantization.md (AWQ)).

x_bar = mean(|x|) per input channel over all calibration tokens (computed by the caller while it records the
layer's inputs). For alpha in {0, 1/n_grid, ..., 1 - 1/n_grid}:
    s = x_bar**alpha                                   (duo_scaling: x_bar**alpha / (w_bar**(1-alpha) + 1e-4))
    s = s.clamp(min=1e-4); s = s / sqrt(s.max() * s.min())
    for every Linear of the group: W <- Q(W * s) / s   (Q = per-group fake quantization of the float32 master)
    loss = mean squared error of the inspected module's output vs its output with the original weights,
           over the search chunks (all calibration tokens, or the subsample the caller chose)
The best s is returned; the weights are restored. alpha = 0 gives s = 1, plain RTN, so the chosen scales are
never worse than RTN on this objective. The inspected module runs in the dtype of its weights (float32, or
bfloat16 where the caller searches in bfloat16); the loss is accumulated in float32.
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


def weight_importance(weights: list[torch.Tensor], spec: QuantSpec) -> torch.Tensor:
    """w_bar for duo scaling: per input channel, mean of |W| normalised by its group's absmax. -> (K,)"""
    w = torch.cat([w.detach().float() for w in weights], dim=0)          # (sum N, K)
    N, K = w.shape
    g = spec.group(K)
    wg = w.abs().view(N, K // g, g)
    return (wg / (wg.amax(dim=-1, keepdim=True) + 1e-6)).view(N, K).mean(dim=0)


def mean_abs(x_chunks: list[torch.Tensor]) -> torch.Tensor:
    """x_bar of chunks (..., K): mean |x| per channel, accumulated in float32. -> (K,)"""
    K = x_chunks[0].shape[-1]
    count = sum(c.numel() // K for c in x_chunks)
    return sum(c.abs().reshape(-1, K).float().sum(dim=0) for c in x_chunks) / count


@torch.no_grad()
def search_scales(x_chunks: list[torch.Tensor], linears: list[nn.Linear],
                  inspect: Callable[[torch.Tensor, int], torch.Tensor], spec: QuantSpec, names: list[str],
                  n_grid: int = 20, duo_scaling: bool = False, x_bar: torch.Tensor | None = None,
                  masters: list[torch.Tensor] | None = None) -> ScaleResult:
    """x_chunks: the group's input in chunks (..., K) over which the loss is measured; inspect(x_chunk, chunk_index)
    -> module output. x_bar (K,): the activation statistic (default: mean_abs(x_chunks)). masters: float32 weights
    (N, K) the candidates are quantized from, never the linears' own parameters (default: a copy of those)."""
    x_bar = mean_abs(x_chunks) if x_bar is None else x_bar.float()
    originals = [lin.weight.detach().clone() for lin in linears]
    masters = originals if masters is None else masters
    w_bar = weight_importance(masters, spec) if duo_scaling else None
    reference = [inspect(c, i).float() for i, c in enumerate(x_chunks)]
    best: ScaleResult | None = None
    rtn_loss = float("nan")
    for step in range(n_grid):
        alpha = step / n_grid
        s = x_bar.pow(alpha) if w_bar is None else x_bar.pow(alpha) / (w_bar.pow(1 - alpha) + 1e-4)
        s = s.clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        for lin, w0, name in zip(linears, masters, names):
            lin.weight.copy_((fake_quantize(w0.float() * s, spec, name) / s).to(lin.weight.dtype))
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
