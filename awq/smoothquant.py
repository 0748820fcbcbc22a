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

`smoothquant_layer` then rounds every smoothed Linear to int8 per output channel (symmetric, round-to-nearest,
kernels/quantizer.py) and, for per-tensor activations, derives each Linear's static activation scale from the
calibration: act_scale = max_k input_absmax[k] / 127 (the largest smoothed input value maps to 127; larger values
at run time are clamped). Activations are quantized at run time (kernels/act_quant.py), not here.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import UserError
from ..kernels.act_quant import ACT_QUANT_MODES, QMAX
from ..kernels.quantizer import QuantizedWeight, QuantSpec, quantize
from ..runtime.families import Family
from ..runtime.module_paths import get_module
from .folding import fold_scales, group_applies

MIN_SCALE = 1e-5
WEIGHT_SPEC = QuantSpec(8, -1, zero_point=False)     # int8 per output channel, symmetric
DEFAULT_ALPHA = 0.5


@dataclass(frozen=True)
class SmoothQuantOptions:
    alpha: float = DEFAULT_ALPHA      # migration strength, [0, 1]
    act_quant: str = "per_token"      # per_token | per_tensor (kernels/act_quant.py)


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
    """One forward of the layer (in its own dtype) over the input chunks (b, T, D) -> (output chunks in the
    chunks' dtype, {linear: max_t |x[t, k]| (K,)})."""
    absmax: dict[str, torch.Tensor] = {}

    def hook_for(name):
        def hook(_module, args):
            m = args[0].detach().abs().reshape(-1, args[0].shape[-1]).float().amax(dim=0)   # (K,)
            absmax[name] = m if name not in absmax else torch.maximum(absmax[name], m)
        return hook

    dtype = next(layer.parameters()).dtype
    pos = tuple(p.to(dtype) for p in position_embeddings)
    handles = [get_module(layer, n).register_forward_pre_hook(hook_for(n)) for n in family.linears]
    try:
        outputs = [layer(c.to(dtype), position_embeddings=pos, attention_mask=None).to(c.dtype) for c in inputs]
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


def check_act_quant(mode: str) -> str:
    if mode not in ACT_QUANT_MODES:
        raise UserError(f"--act_quant {mode!r} is not known.", f"Use one of: {', '.join(ACT_QUANT_MODES)}.")
    return mode


@torch.no_grad()
def smoothquant_layer(layer: nn.Module, family: Family, prefix: str, options: SmoothQuantOptions,
                      inputs: list[torch.Tensor], position_embeddings
                      ) -> tuple[list[torch.Tensor], dict[str, QuantizedWeight], dict[str, torch.Tensor]]:
    """Smooth the float `layer` in place and quantize its Linears (see the module docstring). -> (the layer's
    float output chunks, {linear: int8 per-channel weight}, {linear: act_scale float32 (1,)} for per_tensor, else
    {})."""
    outputs, smoothed = smooth_layer(layer, family, inputs, position_embeddings, options.alpha)
    quantized = {name: quantize(get_module(layer, name).weight, WEIGHT_SPEC, prefix + name) for name in family.linears}
    act_scales = {}
    if options.act_quant == "per_tensor":
        for name in family.linears:
            top = float(smoothed.input_absmax[name].max())
            act_scales[name] = torch.tensor([top / QMAX if top > 0 else 1.0], dtype=torch.float32)
    return outputs, quantized, act_scales
