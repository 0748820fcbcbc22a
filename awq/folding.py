"""Fold AWQ scales s (K,) into the network so that its float function is unchanged (docs/quantization.md (AWQ)).

norm -> linears:    norm.weight /= s;               linear.weight[:, k] *= s[k] for every linear
linear1 -> linear2: linear1.weight[k, :] /= s[k] (and linear1.bias[k] /= s[k]);  linear2.weight[:, k] *= s[k]
The recorded inputs of the scaled linears must then be divided by s (done by the caller).
"""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def fold_scales(prev: nn.Module, linears: list[nn.Linear], s: torch.Tensor) -> None:
    if isinstance(prev, nn.Linear):
        prev.weight.div_(s.view(-1, 1).to(prev.weight.dtype))
        if prev.bias is not None:
            prev.bias.div_(s.to(prev.bias.dtype))
    else:  # an RMSNorm-like module with a per-channel weight
        prev.weight.div_(s.to(prev.weight.dtype))
    for lin in linears:
        lin.weight.mul_(s.view(1, -1).to(lin.weight.dtype))
