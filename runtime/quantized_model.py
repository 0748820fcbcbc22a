"""Swap a meta-device model's Linears for QLinearPerGrp modules described by a checkpoint's quantization_config.

The swapped modules are empty (meta) shells; `load_state_dict(assign=True)` then fills their buffers from the
checkpoint (`<name>.packed`, `.scales`, `.zeros`, `.mins` for GGUF Q4_1 imports, `.bias`, `.act_scale` for
per-tensor W8A8; see checkpoints/quantized_format.py), and the attention modules' calibrated KV cache scales.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UserError
from ..kernels.act_quant import ACT_QUANT_MODES
from ..kernels.kv_quant import KEY_SCALE, VALUE_SCALE
from ..kernels.qlinear import QLinearPerGrp
from ..kernels.quantizer import QuantSpec
from .families import Family
from .module_paths import get_module, set_module


@dataclass(frozen=True)
class QuantLayout:
    spec: QuantSpec
    modules: tuple[str, ...]              # Linear names relative to one decoder layer
    lm_head_group_size: int | None        # None: lm_head stays float
    act_quant: str | None = None          # W8A8 (SmoothQuant): per_token or per_tensor int8 inputs; None: weight-only
    kv_channels: bool = False             # calibrated int8 KV cache channel scales (kernels/kv_quant.py)

    @classmethod
    def from_config(cls, q: dict, family: Family, source) -> "QuantLayout":
        try:
            spec = QuantSpec(int(q["bits"]), int(q["group_size"]), bool(q.get("zero_point", True)),
                             bool(q.get("group_mins", False))).validate()
            modules = tuple(q.get("quantized_modules") or family.linears)
            head = int(q["lm_head_group_size"]) if q.get("lm_head") else None
            act = q.get("act_quant")
            act_mode = None if act is None else str(act["mode"])
            kv = q.get("kv_cache")
            kv_channels = kv is not None and str(kv["scales"]) == "per_channel"
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"The quantization_config in {source}/config.json is incomplete ({exc}).",
                            "Quantize the model again with `run_awq quantize`.") from None
        if act_mode is not None and (act_mode not in ACT_QUANT_MODES or spec.bits != 8 or head is not None):
            raise UserError(f"The quantization_config in {source}/config.json has act_quant {act!r} with "
                            f"{spec.bits}-bit weights{' and a quantized lm_head' if head is not None else ''}; "
                            f"W8A8 checkpoints have 8-bit weights, a float lm_head and mode one of "
                            f"{', '.join(ACT_QUANT_MODES)}.",
                            "Quantize the model again with `run_awq quantize --algorithm smoothquant`.")
        return cls(spec, modules, head, act_mode, kv_channels)


def install_qlinears(model: nn.Module, family: Family, layout: QuantLayout, act_dtype: torch.dtype) -> None:
    """In place, on the meta device: every listed Linear (and lm_head if quantized) becomes a QLinearPerGrp."""
    def swap(name: str, spec: QuantSpec, act_quant: str | None = None) -> None:
        lin = get_module(model, name)
        with torch.device("meta"):
            q = QLinearPerGrp(lin.in_features, lin.out_features, spec, lin.bias is not None, act_dtype,
                              act_quant=act_quant)
        set_module(model, name, q)

    for i in range(len(get_module(model, family.layers))):
        for rel in layout.modules:
            swap(f"{family.layers}.{i}.{rel}", layout.spec, layout.act_quant)
    if layout.lm_head_group_size is not None:
        swap(family.lm_head, QuantSpec(layout.spec.bits, layout.lm_head_group_size, layout.spec.zero_point))


def install_kv_scales(model: nn.Module, family: Family, config) -> None:
    """In place, on the meta device: every layer's attention module gets the calibrated KV channel scale buffers
    (kernels/kv_quant.py: KEY_SCALE, VALUE_SCALE, float32 (kv_heads * head_dim,)) for load_state_dict to fill."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    width = config.num_key_value_heads * head_dim
    for layer in get_module(model, family.layers):
        attn = get_module(layer, family.attn)
        for name in (KEY_SCALE, VALUE_SCALE):
            attn.register_buffer(name, torch.empty(width, dtype=torch.float32, device="meta"))


def kv_channel_scales(model: nn.Module, family: Family) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """layer -> (key scales, value scales) of a model loaded with install_kv_scales ({} without them)."""
    out = {}
    for i, layer in enumerate(get_module(model, family.layers)):
        attn = get_module(layer, family.attn)
        if getattr(attn, KEY_SCALE, None) is not None:
            out[i] = (getattr(attn, KEY_SCALE).float(), getattr(attn, VALUE_SCALE).float())
    return out
