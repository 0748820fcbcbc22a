"""Quantize one float decoder layer: record inputs, search and fold scales, search clips, quantize.

Order of work (llm-awq): one float forward of the layer over the calibration activations records the input of
every Linear and gives the layer's float output (the next layer's input); all scaling groups are searched on
the original weights; the scales are folded (and the recorded inputs divided by them); the clip search runs on
the scaled weights and inputs; finally every Linear is quantized. Works on float modules only: the result is a
`QuantizedWeight` (codes, scales, zeros) per Linear, never packed storage.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from ..kernels.quantizer import QuantizedWeight, QuantSpec, quantize
from ..runtime.families import Family
from ..runtime.module_paths import get_module
from .clip_search import apply_clip, search_clip
from .folding import fold_scales, group_applies
from .gptq import GptqOptions
from .gptq_layer import gptq_layer
from .scale_search import search_scales
from .smoothquant import SmoothQuantOptions, smoothquant_layer


@dataclass
class AwqOptions:
    spec: QuantSpec
    search: bool = True            # False: no activation-aware search (RTN, or precomputed results only)
    clip: bool = True
    duo_scaling: bool = False
    n_grid: int = 20
    search_samples: list[int] | None = None   # calibration samples the scale-search loss is measured on (None: all)
    dtype: torch.dtype = torch.float32         # dtype of the calibration forward and the scale search
    gptq: GptqOptions | None = None            # round with GPTQ (after the AWQ scales and clips when `search`)
    smooth: SmoothQuantOptions | None = None   # SmoothQuant W8A8 instead of AWQ/GPTQ (spec: int8 per channel)

    @property
    def needs_calibration(self) -> bool:
        return self.search or self.gptq is not None or self.smooth is not None


@dataclass
class LayerResult:
    quantized: dict[str, QuantizedWeight]                       # relative Linear name -> weight
    scales: list[tuple[str, tuple[str, ...], torch.Tensor]] = field(default_factory=list)  # llm-awq "scale"
    clips: list[tuple[str, torch.Tensor]] = field(default_factory=list)                     # llm-awq "clip"
    report: list[dict] = field(default_factory=list)
    act_scales: dict[str, torch.Tensor] = field(default_factory=dict)    # linear -> static int8 input scale (1,)


@dataclass
class Recorded:
    """What one float forward of a layer over the calibration chunks leaves for the search.

    x_bar[key] (K,) float32: mean |x| over every calibration token of the input `key`; kept[key]: that input on the
    search samples only, in chunks (b, T, K) of the search dtype; key_of[linear]: the input key it reads (linears
    fed the same tensor share one key)."""
    x_bar: dict[str, torch.Tensor]
    kept: dict[str, list[torch.Tensor]]
    key_of: dict[str, str]


@torch.no_grad()
def float_forward_recording(layer: nn.Module, family: Family, inputs: list[torch.Tensor], position_embeddings,
                            keep: list[int] | None = None) -> tuple[list[torch.Tensor], Recorded]:
    """Run the layer over input chunks (b, T, D), consuming the list (each chunk is freed once used). `keep`: the
    global sample indices whose inputs are kept for the search (None: all). -> (output chunks, Recorded)."""
    names = list(family.linears)
    sums: dict[str, torch.Tensor] = {}
    kept: dict[str, list[torch.Tensor]] = {}
    key_of: dict[str, str] = {}
    seen: list[tuple[torch.Tensor, str]] = []
    rows: list[int] = []          # rows of the current chunk to keep
    count = 0                     # calibration tokens seen so far

    def hook_for(name):
        def hook(_module, args):
            x = args[0]                                                        # (b, T, K)
            for other, key in seen:
                if other is x:
                    key_of.setdefault(name, key)
                    return
            key_of.setdefault(name, name)
            part = x.abs().reshape(-1, x.shape[-1]).float().sum(dim=0)       # (K,)
            sums[name] = part if name not in sums else sums[name] + part
            if rows:
                kept.setdefault(name, []).append(x.detach() if len(rows) == x.shape[0] else x[rows].clone())
            seen.append((x, name))
        return hook

    handles = [get_module(layer, n).register_forward_pre_hook(hook_for(n)) for n in names]
    outputs = []
    start = 0
    try:
        while inputs:
            chunk = inputs.pop(0)
            b = chunk.shape[0]
            rows[:] = [j - start for j in (range(start, start + b) if keep is None else keep) if start <= j < start + b]
            seen.clear()
            outputs.append(layer(chunk, position_embeddings=position_embeddings, attention_mask=None))
            count += chunk.shape[0] * chunk.shape[1]
            start += b
            del chunk
    finally:
        for h in handles:
            h.remove()
    return outputs, Recorded({k: v / count for k, v in sums.items()}, kept, key_of)


def search_copy(layer: nn.Module, dtype: torch.dtype) -> nn.Module:
    """The module the calibration forward and the scale search run on: `layer` itself in float32, else a copy in
    `dtype` (the float32 layer stays the master that scales are folded into and that is quantized)."""
    if dtype == torch.float32:
        return layer
    return copy.deepcopy(layer).to(dtype)


def quantize_layer(layer: nn.Module, family: Family, prefix: str, options: AwqOptions,
                   inputs: list[torch.Tensor] | None, position_embeddings,
                   precomputed: tuple[list, list] | None = None) -> tuple[list[torch.Tensor] | None, LayerResult]:
    """Quantize `layer` in place (its float weights are scaled and clipped). `prefix` is its full name
    ("model.layers.3."). With `options.search`, `inputs` are the calibration activations (chunks (B, T, D)) and the
    layer's float output chunks are returned; `precomputed` = (scales, clips) from an llm-awq cache is applied
    instead of searching. With `options.gptq` the weights (scaled and clipped first if AWQ runs) are rounded by
    GPTQ from `inputs`, and the chunks returned are the output of the quantized layer.
    Returns (output chunks or None, LayerResult)."""
    spec = options.spec
    result = LayerResult(quantized={})
    if options.smooth is not None:
        outputs, result.quantized, result.act_scales = smoothquant_layer(layer, family, prefix, options.smooth,
                                                                         inputs, position_embeddings)
        return outputs, result
    outputs = None
    gptq_inputs = list(inputs) if options.gptq is not None else None   # the AWQ forward consumes `inputs`
    if precomputed is not None:
        _apply_precomputed(layer, prefix, *precomputed)
    elif options.search:
        work = search_copy(layer, options.dtype)
        outputs, rec = float_forward_recording(work, family, inputs, position_embeddings, options.search_samples)
        feats, key_of = rec.kept, rec.key_of
        attn = get_module(work, family.attn)
        searched = []
        for group in family.scale_groups:
            if not group_applies(layer, group.requires, family):
                continue
            linears = [get_module(work, n) for n in group.linears]
            masters = None if work is layer else [get_module(layer, n).weight for n in group.linears]
            inspect_mod = get_module(work, group.inspect)
            if inspect_mod is attn:
                def inspect(x, i, m=inspect_mod):
                    return m(hidden_states=x, position_embeddings=position_embeddings, attention_mask=None)[0]
            else:
                def inspect(x, i, m=inspect_mod):
                    return m(x)
            key = key_of[group.linears[0]]
            res = search_scales(feats[key], linears, inspect, spec, [prefix + n for n in group.linears],
                                options.n_grid, options.duo_scaling, rec.x_bar[key], masters)
            searched.append((group, key, res))
            result.report.append({"layer": prefix.rstrip("."), "group": group.inspect, "alpha": res.alpha,
                                  "loss": res.loss, "rtn_loss": res.rtn_loss})
        del work
        for group, key, res in searched:
            fold_scales(get_module(layer, group.prev_op), [get_module(layer, n) for n in group.linears], res.scales)
            feats[key] = [c / res.scales.to(c.dtype) for c in feats[key]]
            result.scales.append((prefix + group.prev_op, tuple(prefix + n for n in group.linears),
                                  res.scales.clone()))
        if options.clip:
            key, x = None, None  # linears sharing an input are consecutive: concatenate it once, keep one
            for name in family.linears:
                if name in family.no_clip:
                    continue
                lin = get_module(layer, name)
                if key_of[name] != key:
                    key, x = key_of[name], None
                    x = torch.cat([c.reshape(-1, c.shape[-1]).float() for c in feats[key]])  # (tokens, K)
                max_val = search_clip(lin.weight, x, spec, prefix + name, options.n_grid)
                apply_clip(lin.weight, max_val)
                result.clips.append((prefix + name, max_val.unsqueeze(-1)))
    if options.gptq is not None:
        del outputs
        outputs, result.quantized = gptq_layer(layer, family, prefix, spec, options.gptq, gptq_inputs,
                                               position_embeddings)
        return outputs, result
    for name in family.linears:
        lin = get_module(layer, name)
        result.quantized[name] = quantize(lin.weight, spec, prefix + name)
    return outputs, result


def _apply_precomputed(layer: nn.Module, prefix: str, scales: list, clips: list) -> None:
    """Apply llm-awq cache entries whose names start with `prefix` (folding scales, then clamping)."""
    for prev_name, linear_names, s in scales:
        if not prev_name.startswith(prefix):
            continue
        prev = get_module(layer, prev_name[len(prefix):])
        fold_scales(prev, [get_module(layer, n[len(prefix):]) for n in linear_names], s.float())
    for name, max_val in clips:
        if name.startswith(prefix):
            lin = get_module(layer, name[len(prefix):])
            apply_clip(lin.weight, max_val.reshape(lin.weight.shape[0], -1).float())
