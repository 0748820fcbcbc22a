"""GPTQ over one float decoder layer, "true sequential" (docs/quantization.md (GPTQ)).

The layer's Linears are taken in execution order, those reading one input together (q/k/v, o, gate/up, down:
`Family.input_sharing_linears`). For each such tuple the calibration chunks run through the layer, whose earlier
Linears already hold their quantized weights, until the tuple's input is seen (the forward stops there); that
input's Hessian drives `gptq_quantize` of every Linear in the tuple, and their weights are replaced by the
dequantized ones. A last full forward gives the layer's output with every weight quantized: the next layer's
calibration input, as in GPTQ.
"""
from __future__ import annotations

import torch
from torch import nn

from ..kernels.quantizer import QuantizedWeight, QuantSpec
from ..runtime.families import Family
from ..runtime.module_paths import get_module
from .gptq import GptqOptions, HessianAccumulator, gptq_quantize


class _InputSeen(Exception):
    """Raised by the recording hook to end a forward once the Linear's input is recorded."""


def _record_input(layer: nn.Module, name: str, chunks: list[torch.Tensor], position_embeddings) -> torch.Tensor:
    """H (K, K) of the input of Linear `name` over every chunk (b, T, D) of the layer's calibration input."""
    lin = get_module(layer, name)
    acc = HessianAccumulator(lin.in_features)

    def hook(_module, args):
        acc.add(args[0])
        raise _InputSeen

    handle = lin.register_forward_pre_hook(hook)
    try:
        for chunk in chunks:
            try:
                layer(chunk.float(), position_embeddings=position_embeddings, attention_mask=None)
            except _InputSeen:
                pass
    finally:
        handle.remove()
    return acc.hessian()


@torch.no_grad()
def gptq_layer(layer: nn.Module, family: Family, prefix: str, spec: QuantSpec, options: GptqOptions,
               inputs: list[torch.Tensor], position_embeddings) -> tuple[list[torch.Tensor], dict[str, QuantizedWeight]]:
    """Quantize every Linear of the float32 `layer` in place (weights become their dequantized values), consuming
    the input chunks (b, T, D). -> (the quantized layer's output chunks, in the inputs' dtype;
    {relative Linear name: QuantizedWeight})."""
    position_embeddings = tuple(p.float() for p in position_embeddings)
    quantized: dict[str, QuantizedWeight] = {}
    for names in family.input_sharing_linears:
        H = _record_input(layer, names[0], inputs, position_embeddings)
        for name in names:
            lin = get_module(layer, name)
            q = gptq_quantize(lin.weight, H, spec, options, prefix + name)
            lin.weight.copy_(q.dequantize(lin.weight.dtype))
            quantized[name] = q
        del H
    outputs = []
    while inputs:
        chunk = inputs.pop(0)
        outputs.append(layer(chunk.float(), position_embeddings=position_embeddings,
                             attention_mask=None).to(chunk.dtype))
        del chunk
    return outputs, quantized
