"""Interop with the AutoAWQ GEMM checkpoint layout (4-bit), which transformers, vLLM and the onnxruntime-genai
model builder load.

config.json quantization_config = {"quant_method": "awq", "bits": 4, "group_size": g, "zero_point": true,
                                   "version": "gemm", "modules_to_not_convert": null}
Per quantized Linear `<name>`: `<name>.qweight` int32 (K, N/8), `<name>.qzeros` int32 (K/g, N/8) (both packed
along the output dimension in AutoAWQ's nibble order, kernels/formats.py `pack_awq_gemm`), `<name>.scales` fp16
(K/g, N), optional `<name>.bias` fp16 (N,). W[n, k] = (q - z[k // g, n]) * s[k // g, n]. Float tensors in fp16.
No AutoAWQ consumer loads 3-bit or 2/8-bit weights or a quantized lm_head: those exports are refused.
"""
from __future__ import annotations

import torch

from ..errors import UserError
from ..kernels.formats import native_format, pack, pack_awq_gemm, unpack_awq_gemm
from ..kernels.quantizer import QuantizedWeight


def autoawq_quantization_config(group_size: int) -> dict:
    return {"quant_method": "awq", "bits": 4, "group_size": group_size, "zero_point": True, "version": "gemm",
            "modules_to_not_convert": None}


def check_exportable(bits: int, group_size: int, lm_head: bool) -> None:
    if bits != 4:
        raise UserError(f"The AutoAWQ GEMM layout holds only 4-bit weights; this is a {bits}-bit quantization. "
                        "No AutoAWQ consumer (transformers, vLLM, the onnxruntime-genai builder) loads int3 or "
                        "other widths.", "Export w4 (--w_bit 4), or keep the native format (drop --export awq).")
    if group_size == -1:
        raise UserError("The AutoAWQ GEMM layout needs a finite group size.", "Use --group_size 32, 64 or 128.")
    if lm_head:
        raise UserError("AutoAWQ checkpoints keep lm_head in float; a quantized lm_head cannot be exported.",
                        "Drop --lm_head for --export awq.")


def autoawq_tensors(name: str, qw: QuantizedWeight, bias: torch.Tensor | None) -> dict[str, torch.Tensor]:
    out = {f"{name}.qweight": pack_awq_gemm(qw.codes),
           f"{name}.qzeros": pack_awq_gemm(qw.zeros),
           f"{name}.scales": qw.scales.to(torch.float16).t().contiguous()}
    if bias is not None:
        out[f"{name}.bias"] = bias.detach().to(torch.float16).contiguous()
    return out


def check_autoawq_config(q: dict, source) -> None:
    if q.get("version", "gemm").lower() != "gemm" or int(q.get("bits", 0)) != 4 or not q.get("zero_point", True):
        raise UserError(f"{source}/config.json declares an AWQ variant this tool cannot import "
                        f"(version {q.get('version')!r}, bits {q.get('bits')}, zero_point {q.get('zero_point')}).",
                        "Only AutoAWQ GEMM 4-bit checkpoints with zero points are supported.")


def native_quantization_config(q: dict, linears: tuple[str, ...]) -> dict:
    """The project's quantization_config describing an imported AutoAWQ checkpoint."""
    return {"quant_method": "edgeawq", "bits": 4, "group_size": int(q["group_size"]), "zero_point": True,
            "quantized_modules": list(linears), "lm_head": False, "imported_from": "autoawq-gemm"}


def import_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """AutoAWQ GEMM tensors -> the project's (`.packed` u4k, `.scales` (N, G) fp16, `.zeros` uint8 (N, G))."""
    out: dict[str, torch.Tensor] = {}
    for key, t in state.items():
        if key.endswith(".qweight"):
            name = key[: -len(".qweight")]
            codes = unpack_awq_gemm(t)                                     # (N, K)
            out[f"{name}.packed"] = pack(codes, native_format(4))
            out[f"{name}.zeros"] = unpack_awq_gemm(state[f"{name}.qzeros"])  # (N, G)
            out[f"{name}.scales"] = state[f"{name}.scales"].to(torch.float16).t().contiguous()
        elif key.endswith((".qzeros", ".scales")):
            continue
        else:
            out[key] = t
    return out
