"""Fold AWQ scales s (K,) into the network so that its float function is unchanged (docs/quantization.md (AWQ)).

norm -> linears:    norm.weight /= s;               linear.weight[:, k] *= s[k] for every linear
linear1 -> linear2: linear1.weight[k, :] /= s[k] (and linear1.bias[k] /= s[k]);  linear2.weight[:, k] *= s[k]
The recorded inputs of the scaled linears must then be divided by s (done by the caller).
"""
from __future__ import annotations

import torch
from torch import nn

from ..runtime.families import Family
from ..runtime.module_paths import get_module


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


def group_applies(layer: nn.Module, requires: str | None, family: Family) -> bool:
    """Whether a scale group with condition `requires` folds in this layer: "v_o_same_shape" only when v_proj's
    outputs are o_proj's inputs one to one (not under grouped-query attention)."""
    if requires is None:
        return True
    if requires == "v_o_same_shape":
        v = get_module(layer, f"{family.attn}.{family.v}")
        o = get_module(layer, f"{family.attn}.{family.o}")
        return v.weight.shape[0] == o.weight.shape[1]
    raise ValueError(f"unknown scale-group condition {requires!r}")
