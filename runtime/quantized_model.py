"""Swap a meta-device model's Linears for QLinearPerGrp modules described by a checkpoint's quantization_config.

The swapped modules are empty (meta) shells; `load_state_dict(assign=True)` then fills their buffers from the
checkpoint (`<name>.packed`, `.scales`, `.zeros`, `.mins` for GGUF Q4_1 imports, `.bias`, `.act_scale` for
per-tensor W8A8; see checkpoints/quantized_format.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UserError
from ..kernels.act_quant import ACT_QUANT_MODES
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

    @classmethod
    def from_config(cls, q: dict, family: Family, source) -> "QuantLayout":
        try:
            spec = QuantSpec(int(q["bits"]), int(q["group_size"]), bool(q.get("zero_point", True)),
                             bool(q.get("group_mins", False))).validate()
            modules = tuple(q.get("quantized_modules") or family.linears)
            head = int(q["lm_head_group_size"]) if q.get("lm_head") else None
            act = q.get("act_quant")
            act_mode = None if act is None else str(act["mode"])
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"The quantization_config in {source}/config.json is incomplete ({exc}).",
                            "Quantize the model again with `run_awq quantize`.") from None
        if act_mode is not None and (act_mode not in ACT_QUANT_MODES or spec.bits != 8 or head is not None):
            raise UserError(f"The quantization_config in {source}/config.json has act_quant {act!r} with "
                            f"{spec.bits}-bit weights{' and a quantized lm_head' if head is not None else ''}; "
                            f"W8A8 checkpoints have 8-bit weights, a float lm_head and mode one of "
                            f"{', '.join(ACT_QUANT_MODES)}.",
                            "Quantize the model again with `run_awq quantize --algorithm smoothquant`.")
        return cls(spec, modules, head, act_mode)


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
