"""Layer-by-layer streaming quantization of a whole model (docs/quantization.md (AWQ)).

Only one decoder layer's float weights are materialised at a time: the model skeleton lives on the meta
device, layer i's tensors are read from the checkpoint (a StreamedSafetensors reads them into memory that is
freed afterwards), quantized, handed to `sink`, and the layer is moved back to the meta device. With calibration,
the activations (n_samples, seqlen, hidden) flow from layer to layer in chunks of `chunk_samples` samples, in
`options.dtype` (float32, or bfloat16 where the CPU multiplies it natively); each layer's float output is the
next layer's input.

`sink` receives plain tensors and `QuantizedWeight`s (codes, scales, zeros); packing and file formats are the
sink's business (checkpoints/), never this package's.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from ..progress import bar, bars_enabled, log_projection
from ..kernels.quantizer import QuantizedWeight, QuantSpec, quantize
from ..runtime.families import Family
from ..runtime.memory import release_free_memory
from ..runtime.model_loader import IGNORED_KEYS
from ..runtime.module_paths import get_module
from .kv_calibration import kv_channel_scales
from .layer_quantizer import AwqOptions, quantize_layer, search_copy


class QuantizedSink(Protocol):
    def write(self, floats: dict[str, torch.Tensor], quantized: dict[str, QuantizedWeight]) -> None: ...


@dataclass
class QuantizeJob:
    options: AwqOptions
    calib_ids: torch.Tensor | None = None          # (n_samples, seqlen) when searching
    precomputed: tuple[list, list] | None = None   # llm-awq cache (scales, clips)
    lm_head: bool = False
    lm_head_group_size: int = 32
    chunk_samples: int = 8
    progress: bool = True
    calibrate_kv: bool = False                      # also record int8 KV cache channel scales (awq/kv_calibration)


@dataclass
class QuantizeReport:
    seconds: float = 0.0
    scales: list = field(default_factory=list)
    clips: list = field(default_factory=list)
    groups: list[dict] = field(default_factory=list)
    layer_seconds: list[float] = field(default_factory=list)   # wall time of each decoder layer, in order


def _read(state, name: str) -> torch.Tensor:
    """One tensor of `state`: a dict, or a StreamedSafetensors that reads it from disk on demand."""
    return state.load(name) if hasattr(state, "load") else state[name]


def _assign(module: nn.Module, prefix: str, state, dtype: torch.dtype | None) -> None:
    part = {k[len(prefix):]: _read(state, k) for k in state.keys() if k.startswith(prefix) and not k.endswith(IGNORED_KEYS)}
    if dtype is not None:
        part = {k: v.to(dtype) for k, v in part.items()}
    module.load_state_dict(part, strict=True, assign=True)


@torch.no_grad()
def quantize_streaming(skeleton: nn.Module, config, family: Family, state, job: QuantizeJob,
                       sink: QuantizedSink) -> QuantizeReport:
    """Quantize every decoder-layer Linear (and lm_head with `job.lm_head`) of a meta-device `skeleton`."""
    t0 = time.perf_counter()
    report = QuantizeReport()
    layers = get_module(skeleton, family.layers)
    inputs = position_embeddings = None
    if job.options.needs_calibration or job.calibrate_kv:
        embed = get_module(skeleton, family.embed)
        _assign(embed, family.embed + ".", state, None)  # kept in its file dtype: only the looked-up rows are cast
        dtype = job.options.dtype
        inputs = [embed(c).to(dtype) for c in job.calib_ids.split(job.chunk_samples)]  # [(b, T, D)]
        embed.to("meta")
        rotary = type(get_module(skeleton, family.rotary))(config=config)
        T = job.calib_ids.shape[1]
        position_embeddings = tuple(p.to(dtype) for p in rotary(inputs[0].float(), torch.arange(T)[None]))  # (1, T, hd) x2
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    steps = range(len(layers))
    for i in (bar(steps, "quantizing layers", unit="layer") if job.progress else steps):
        t_layer = time.perf_counter()
        prefix = f"{family.layers}.{i}."
        layer = layers[i]
        _assign(layer, prefix, state, torch.float32)
        kv_scales, float_outputs = {}, None
        if job.calibrate_kv:       # before quantize_layer: from the float layer (AWQ's scaling does not change k, v)
            kv_scales, float_outputs = kv_channel_scales(search_copy(layer, job.options.dtype), family, inputs,
                                                         position_embeddings, head_dim)
        inputs, res = quantize_layer(layer, family, prefix, job.options, inputs, position_embeddings,
                                     job.precomputed)
        if inputs is None:         # no search: the next layer's calibration inputs are this float layer's outputs
            inputs = float_outputs
        quantized_names = {prefix + n + ".weight" for n in res.quantized}
        floats = {prefix + n: p.detach() for n, p in layer.named_parameters() if prefix + n not in quantized_names}
        floats.update({prefix + n + ".act_scale": s for n, s in res.act_scales.items()})   # per-tensor W8A8
        floats.update({f"{prefix}{family.attn}.{n}": s for n, s in kv_scales.items()})
        sink.write(floats, {prefix + n: q for n, q in res.quantized.items()})
        report.scales += res.scales
        report.clips += res.clips
        report.groups += res.report
        layer.to("meta")
        del res
        release_free_memory()
        report.layer_seconds.append(time.perf_counter() - t_layer)
        if job.progress and not bars_enabled():
            log_projection(report.layer_seconds, len(layers), time.perf_counter() - t0)
    rest = {k: _read(state, k) for k in state.keys() if not k.startswith(family.layers + ".")}
    quantized: dict[str, QuantizedWeight] = {}
    head_key = family.lm_head + ".weight"
    if job.lm_head:
        head = rest.pop(head_key, None)
        if head is None:  # tied embeddings: the head gets its own quantized copy, the embedding stays float
            head = rest[family.embed + ".weight"]
        spec = QuantSpec(job.options.spec.bits, job.lm_head_group_size, job.options.spec.zero_point).validate()
        quantized[family.lm_head] = quantize(head.float(), spec, family.lm_head)
    sink.write(rest, quantized)
    report.seconds = time.perf_counter() - t0
    return report
