"""QLinearPerGrp: a Linear layer with per-group quantized weights, as a registered torch custom op + module.

The op `edgeawq::qlinear_pergrp(x, packed, scales, zeros, bias, bits, act_dtype, mins=None)` computes
`F.linear(x_a, W_a, bias_a).to(x.dtype)` where `_a` means cast to the activation dtype (bf16 for w4abf16, or
fp32) and W = (codes - zeros) * scales (+ mins) per group (kernels/quantizer.py), codes unpacked from the native
format of `bits` (kernels/formats.py). This is the pure-PyTorch reference kernel that the PyTorch engines run;
the fast engines do not dispatch through the op but run whole decoders of their own (cpu_backend/ native engine,
npu_backend/ ONNX Runtime graph, tt_backend/ emulation), each tested against this reference. A fake (meta)
implementation gives shapes only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .act_quant import ACT_QUANT_MODES, fake_quantize_activations
from .formats import native_format, pack, unpack
from .quantizer import QuantizedWeight, QuantSpec, dequantize, quantize

ACT_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


@torch.library.custom_op("edgeawq::qlinear_pergrp", mutates_args=())
def qlinear_pergrp(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                   bias: torch.Tensor | None, bits: int, act_dtype: torch.dtype,
                   mins: torch.Tensor | None = None) -> torch.Tensor:
    codes = unpack(packed, native_format(bits))                  # (N, K) uint8
    w = dequantize(codes, scales, zeros, act_dtype, mins)        # (N, K)
    b = None if bias is None else bias.to(act_dtype)
    return F.linear(x.to(act_dtype), w, b).to(x.dtype)           # (..., N)


def aie_linear(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
               bias: torch.Tensor | None, bits: int, mins: torch.Tensor | None = None) -> torch.Tensor:
    """QLinearPerGrp computed the way the Ryzen AI NPU kernel does (AIE numerics, `--act_dtype aie`):
    activations rounded to bf16; scales (and GGUF Q4_1 minimums) converted to bf16 on the device; each weight
    (code - zero) * scale (+ min) rounded to bf16; products accumulated in fp32 (+ fp32 bias); the output written
    as bf16."""
    codes = unpack(packed, native_format(bits))                                  # (N, K) uint8
    s = scales.to(torch.bfloat16)                                                # (N, K/g) bf16 on the device
    m = None if mins is None else mins.to(torch.bfloat16)
    w = dequantize(codes, s, zeros, torch.bfloat16, m).float()                  # (N, K) bf16 weights, as fp32
    y = F.linear(x.to(torch.bfloat16).float(), w, None if bias is None else bias.float())  # fp32 accumulation
    return y.to(torch.bfloat16).to(x.dtype)                                      # (..., N)


@qlinear_pergrp.register_fake
def _qlinear_pergrp_fake(x, packed, scales, zeros, bias, bits, act_dtype, mins=None):
    return x.new_empty(*x.shape[:-1], packed.shape[0])


class QLinearPerGrp(nn.Module):
    """Per-group quantized Linear. Buffers: `packed` (native format of `bits`), `scales` (N, K/g) fp16,
    `zeros` (N, K/g) uint8, `mins` (N, K/g) float16 when spec.mins (GGUF Q4_1 imports), optional `bias` (N,),
    `act_scale` float32 (1,) with act_quant "per_tensor".

    `act_quant` None (weight-only: x is cast to `act_dtype`), "per_token" or "per_tensor" (W8A8: the input is
    quantized to int8 first, kernels/act_quant.py, and the product taken in float32, exact for int8 codes)."""

    def __init__(self, in_features: int, out_features: int, spec: QuantSpec, bias: bool,
                 act_dtype: torch.dtype = torch.bfloat16, scale_dtype: torch.dtype = torch.float16,
                 act_quant: str | None = None) -> None:
        super().__init__()
        if act_quant is not None and act_quant not in ACT_QUANT_MODES:
            raise ValueError(f"unknown act_quant {act_quant!r}")
        self.in_features, self.out_features = in_features, out_features
        self.spec = spec
        self.act_dtype = act_dtype
        self.act_quant = act_quant
        g = spec.group(in_features)
        fmt = native_format(spec.bits)
        per_byte = {"u8": 1, "u4k": 2, "u2k": 4}[fmt]
        self.register_buffer("packed", torch.zeros(out_features, in_features // per_byte, dtype=torch.uint8))
        self.register_buffer("scales", torch.zeros(out_features, in_features // g, dtype=scale_dtype))
        self.register_buffer("zeros", torch.zeros(out_features, in_features // g, dtype=torch.uint8))
        self.register_buffer("mins", torch.zeros(out_features, in_features // g, dtype=torch.float16)
                             if spec.mins else None)
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self.register_buffer("act_scale", torch.ones(1) if act_quant == "per_tensor" else None)

    @classmethod
    def from_quantized(cls, qw: QuantizedWeight, bias: torch.Tensor | None,
                       act_dtype: torch.dtype = torch.bfloat16, act_quant: str | None = None,
                       act_scale: torch.Tensor | None = None) -> "QLinearPerGrp":
        N, K = qw.shape
        m = cls(K, N, qw.spec, bias is not None, act_dtype, qw.scales.dtype, act_quant)
        if act_quant == "per_tensor":
            m.act_scale = act_scale.detach().float().reshape(1).clone()
        m.packed = pack(qw.codes, native_format(qw.spec.bits))
        m.scales, m.zeros = qw.scales.clone(), qw.zeros.clone()
        if qw.spec.mins:
            m.mins = qw.mins.to(torch.float16).clone()
        if bias is not None:
            m.bias = bias.detach().float().clone()
        return m

    @classmethod
    def from_float(cls, linear: nn.Linear, spec: QuantSpec, act_dtype: torch.dtype = torch.bfloat16,
                   name: str = "") -> "QLinearPerGrp":
        """Round-to-nearest quantization of a float Linear."""
        return cls.from_quantized(quantize(linear.weight, spec, name), linear.bias, act_dtype)

    @classmethod
    def concat_rows(cls, parts: list["QLinearPerGrp"]) -> "QLinearPerGrp":
        """One QLinearPerGrp whose output rows are the parts' rows in order (exact: groups never cross rows)."""
        first = parts[0]
        has_bias = first.bias is not None
        if len({p.act_quant for p in parts}) != 1 or (first.act_scale is not None and
                                                       not all(torch.equal(p.act_scale, first.act_scale) for p in parts)):
            raise ValueError("concat_rows: the parts quantize their (shared) input differently")
        m = cls(first.in_features, sum(p.out_features for p in parts), first.spec, has_bias, first.act_dtype,
                first.scales.dtype, first.act_quant)
        if first.act_scale is not None:
            m.act_scale = first.act_scale.clone()
        m.packed = torch.cat([p.packed for p in parts])
        m.scales = torch.cat([p.scales for p in parts])
        m.zeros = torch.cat([p.zeros for p in parts])
        if first.spec.mins:
            m.mins = torch.cat([p.mins for p in parts])
        if has_bias:
            m.bias = torch.cat([p.bias for p in parts])
        m.numerics = first.numerics
        return m

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        codes = unpack(self.packed, native_format(self.spec.bits))
        return dequantize(codes, self.scales, self.zeros, dtype, self.mins)

    numerics = "reference"      # or "aie": the Ryzen AI kernel's numerics (aie_linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_quant is not None:
            x_hat = fake_quantize_activations(x, self.act_quant, self.act_scale)              # (..., K) float32
            return torch.ops.edgeawq.qlinear_pergrp(x_hat, self.packed, self.scales, self.zeros, self.bias,
                                                    self.spec.bits, torch.float32, self.mins).to(x.dtype)
        if self.numerics == "aie":
            return aie_linear(x, self.packed, self.scales, self.zeros, self.bias, self.spec.bits, self.mins)
        return torch.ops.edgeawq.qlinear_pergrp(x, self.packed, self.scales, self.zeros, self.bias, self.spec.bits,
                                                self.act_dtype, self.mins)

    def extra_repr(self) -> str:
        act = "aie" if self.numerics == "aie" else {v: k for k, v in ACT_DTYPES.items()}.get(self.act_dtype,
                                                                                          str(self.act_dtype))
        if self.act_quant is not None:
            act = f"int8 {self.act_quant}"
        sym = ", group mins" if self.spec.mins else "" if self.spec.zero_point else ", symmetric"
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.spec.bits}, "
                f"group_size={self.spec.group_size}{sym}, act={act}, bias={self.bias is not None}")
