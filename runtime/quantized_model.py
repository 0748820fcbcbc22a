"""Swap a meta-device model's Linears for QLinearPerGrp modules described by a checkpoint's quantization_config.

The swapped modules are empty (meta) shells; `load_state_dict(assign=True)` then fills their buffers from the
checkpoint (`<name>.packed`, `.scales`, `.zeros`, `.mins` for GGUF Q4_1 imports, `.bias`; see checkpoints/quantized_format.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UserError
from ..kernels.qlinear import QLinearPerGrp
from ..kernels.quantizer import QuantSpec
from .families import Family
from .module_paths import get_module, set_module


@dataclass(frozen=True)
class QuantLayout:
    spec: QuantSpec
    modules: tuple[str, ...]              # Linear names relative to one decoder layer
    lm_head_group_size: int | None        # None: lm_head stays float

    @classmethod
    def from_config(cls, q: dict, family: Family, source) -> "QuantLayout":
        try:
            spec = QuantSpec(int(q["bits"]), int(q["group_size"]), bool(q.get("zero_point", True)),
                             bool(q.get("group_mins", False))).validate()
            modules = tuple(q.get("quantized_modules") or family.linears)
            head = int(q["lm_head_group_size"]) if q.get("lm_head") else None
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"The quantization_config in {source}/config.json is incomplete ({exc}).",
                            "Quantize the model again with `run_awq quantize`.") from None
        return cls(spec, modules, head)


def install_qlinears(model: nn.Module, family: Family, layout: QuantLayout, act_dtype: torch.dtype) -> None:
    """In place, on the meta device: every listed Linear (and lm_head if quantized) becomes a QLinearPerGrp."""
    def swap(name: str, spec: QuantSpec) -> None:
        lin = get_module(model, name)
        with torch.device("meta"):
            q = QLinearPerGrp(lin.in_features, lin.out_features, spec, lin.bias is not None, act_dtype)
        set_module(model, name, q)

    for i in range(len(get_module(model, family.layers))):
        for rel in layout.modules:
            swap(f"{family.layers}.{i}.{rel}", layout.spec)
    if layout.lm_head_group_size is not None:
        swap(family.lm_head, QuantSpec(layout.spec.bits, layout.lm_head_group_size, layout.spec.zero_point))
