"""SmoothQuant's migration of activation outliers into weights, on one float decoder layer
(docs/quantization.md (SmoothQuant)).

For the Linears of one scaling group (the family's `scale_groups`: input norm -> q/k/v, v -> o when the shapes
match, post-attention norm -> gate/up, up -> down), reading one input X (tokens, K) produced by a foldable
previous op, per input channel k:

    s[k] = max_t |X[t, k]| ** alpha / max_n |W[n, k]| ** (1 - alpha)     (W: the group's weights stacked on N)

taken group by group in that order, each from the weights as folded so far (folding up -> down rescales the rows
of up_proj after its columns were used for the gate/up scales; a row scale never changes a column's maximum
position, and both are exact in float arithmetic up to rounding),

with s[k] = 1 where channel k of X or of W is all zero, and s clamped to >= 1e-5. The scales are folded as AWQ's
are (awq/folding.py): the previous op is divided by s and the Linears' columns multiplied by it, so the layer's
float function is unchanged and X / s has the flatter channel maxima max|X[:, k]| / s[k] (at alpha = 0.5 equal to
the weight column maxima max|W[:, k]| * s[k]). `alpha` 0 leaves the activations as they are, 1 moves all of
their range into the weights.

This module computes and folds scales only; quantizing the smoothed weights (int8 per channel) and the
activations (per tensor or per token) is the caller's business.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import UserError
from ..runtime.families import Family
from ..runtime.module_paths import get_module
from .folding import fold_scales
from .layer_quantizer import group_applies

MIN_SCALE = 1e-5


def check_alpha(alpha: float) -> float:
    if not 0.0 <= alpha <= 1.0:
        raise UserError(f"--sq_alpha {alpha} is outside [0, 1].",
                        "Pass a migration strength between 0 (none) and 1 (all of it); SmoothQuant uses 0.5.")
    return float(alpha)


def smoothing_scales(x_absmax: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """s (K,) float32 from the channel maxima of the input `x_absmax` (K,) and the weights (N_i, K) reading it."""
    w_absmax = torch.cat([w.detach().float().abs() for w in weights]).amax(dim=0)      # (K,)
    x = x_absmax.float()
    s = x.pow(alpha) / w_absmax.pow(1.0 - alpha)
    s = torch.where((x > 0) & (w_absmax > 0), s, torch.ones_like(s))
    return s.clamp(min=MIN_SCALE)


@dataclass
class SmoothedLayer:
    """scales[prev_op] = (linears, s (K,)) for every folded group; input_absmax[linear] (K,) float32: the channel
    maxima of that Linear's input after smoothing (max over calibration tokens of |x| / s)."""
    scales: dict[str, tuple[tuple[str, ...], torch.Tensor]] = field(default_factory=dict)
    input_absmax: dict[str, torch.Tensor] = field(default_factory=dict)


@torch.no_grad()
def record_input_absmax(layer: nn.Module, family: Family, inputs: list[torch.Tensor],
                        position_embeddings) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """One float forward over the input chunks (b, T, D) -> (output chunks, {linear: max_t |x[t, k]| (K,)})."""
    absmax: dict[str, torch.Tensor] = {}

    def hook_for(name):
        def hook(_module, args):
            m = args[0].detach().abs().reshape(-1, args[0].shape[-1]).float().amax(dim=0)   # (K,)
            absmax[name] = m if name not in absmax else torch.maximum(absmax[name], m)
        return hook

    handles = [get_module(layer, n).register_forward_pre_hook(hook_for(n)) for n in family.linears]
    try:
        outputs = [layer(c, position_embeddings=position_embeddings, attention_mask=None) for c in inputs]
    finally:
        for h in handles:
            h.remove()
    return outputs, absmax


@torch.no_grad()
def smooth_layer(layer: nn.Module, family: Family, inputs: list[torch.Tensor], position_embeddings,
                 alpha: float) -> tuple[list[torch.Tensor], SmoothedLayer]:
    """Fold SmoothQuant scales into the float `layer` in place. -> (the layer's output chunks, unchanged by the
    smoothing; SmoothedLayer). Linears outside every applicable group (o_proj under GQA) keep their inputs."""
    outputs, absmax = record_input_absmax(layer, family, inputs, position_embeddings)
    result = SmoothedLayer(input_absmax=dict(absmax))
    for group in family.scale_groups:
        if not group_applies(layer, group.requires, family):
            continue
        linears = [get_module(layer, n) for n in group.linears]
        s = smoothing_scales(absmax[group.linears[0]], [lin.weight for lin in linears], alpha)   # (K,)
        fold_scales(get_module(layer, group.prev_op), linears, s)
        result.scales[group.prev_op] = (group.linears, s)
        for name in group.linears:
            result.input_absmax[name] = absmax[name] / s
    return outputs, result
