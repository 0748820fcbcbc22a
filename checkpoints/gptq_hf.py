"""Reading GPTQ checkpoints in the common Hugging Face layout (AutoGPTQ / GPTQModel / optimum), so that they run
on every target.

config.json quantization_config = {"quant_method": "gptq", "bits": 4 | 8, "group_size": g (-1: per channel),
  "desc_act": bool, "sym": bool, "checkpoint_format": "gptq" (default) | "gptq_v2", ...}
Per quantized Linear `<name>` (N out, K in, G = K / g groups):
  `<name>.qweight` int32 (K * bits / 32, N): packed along K; code of (n, k) = bits [(k % p) * bits, +bits) of
      qweight[k // p, n], p = 32 / bits, lowest bits first;
  `<name>.qzeros` int32 (G, N * bits / 32): packed along N the same way; the zero point is the stored value + 1
      in the "gptq" (v1) format, the stored value itself in "gptq_v2";
  `<name>.scales` fp16 (G, N); `<name>.g_idx` int32 (K,): the group of each input channel; optional `.bias` (N,).
  W[n, k] = (q[n, k] - z[g_idx[k], n]) * s[g_idx[k], n].
Every decoder-layer Linear must be quantized; lm_head and the rest stay float. The native layout holds groups of
consecutive channels only: a g_idx other than k // g (desc_act checkpoints saved without static groups) is
refused, as are 2/3-bit checkpoints (3-bit codes straddle int32 words) and v1 zero points that overflow the grid
(stored 2**bits - 1, which v1 kernels execute as zero point 2**bits).
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError
from ..kernels.formats import native_format, pack
from ..kernels.quantizer import GROUP_SIZES

BITS = (4, 8)
FORMATS = ("gptq", "gptq_v2")


def check_gptq_config(q: dict, folder: Path) -> None:
    where = f"{folder}/config.json declares a GPTQ checkpoint"
    bits, group = q.get("bits"), q.get("group_size")
    if bits not in BITS:
        raise UserError(f"{where} with {bits!r}-bit weights; this tool reads 4- and 8-bit GPTQ checkpoints "
                        "(3-bit GPTQ codes straddle int32 words).", "Use a 4- or 8-bit GPTQ checkpoint, or "
                        "quantize the float model here with --algorithm gptq --w_bit 3.")
    if group not in GROUP_SIZES:
        raise UserError(f"{where} with group_size {group!r}, which the native layout cannot hold.",
                        f"Use a checkpoint with group_size one of {GROUP_SIZES}, or quantize the float model here.")
    fmt = q.get("checkpoint_format", "gptq")
    if fmt not in FORMATS:
        raise UserError(f"{where} in checkpoint_format {fmt!r}.", f"Supported formats: {', '.join(FORMATS)}.")


def native_quantization_config(q: dict, linears: tuple[str, ...]) -> dict:
    """The project's quantization_config describing a GPTQ checkpoint read through `import_state`."""
    return {"quant_method": "edgeawq", "bits": int(q["bits"]), "group_size": int(q["group_size"]),
            "zero_point": True, "quantized_modules": list(linears), "lm_head": False,
            "imported_from": "hf-" + q.get("checkpoint_format", "gptq")}


def _unpack_rows(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 (R, C) packed along dim 0, 32 / bits codes per word, lowest first -> uint8 (R * 32 / bits, C)."""
    per = 32 // bits
    shifts = torch.arange(per, dtype=torch.int32) * bits                  # (per,)
    codes = (packed.unsqueeze(1) >> shifts[None, :, None]) & (2 ** bits - 1)  # (R, per, C)
    return codes.reshape(-1, packed.shape[1]).to(torch.uint8)


def _tensor(state: dict, name: str, dtype: torch.dtype, shape: tuple[int, ...] | str, source) -> torch.Tensor:
    """state[name], refused by name unless it has `dtype` and `shape` (a tuple, or a description of a 2-D shape
    that no fixed tuple states, which only a missing or non-2-D tensor can fail)."""
    t = state.get(name)
    bad_shape = t is None or (t.dim() != 2 if isinstance(shape, str) else tuple(t.shape) != shape)
    if t is None or t.dtype != dtype or bad_shape:
        found = "missing" if t is None else f"{t.dtype} {tuple(t.shape)}"
        raise UserError(f"GPTQ checkpoint {source}: tensor {name} is {found}, expected {dtype} {shape}.",
                        "The checkpoint's files are damaged or not in the Hugging Face GPTQ layout; re-download "
                        "or re-export it.")
    return t


def import_linear(state: dict, name: str, bits: int, group_size: int, fmt: str, source) -> dict[str, torch.Tensor]:
    """One GPTQ Linear -> the native tensors (`.packed`, `.scales` (N, G) fp16, `.zeros` uint8 (N, G))."""
    qweight = _tensor(state, f"{name}.qweight", torch.int32,
                      f"(K * {bits} / 32, N) for K inputs and N outputs", source)
    rows, N = qweight.shape
    K = rows * 32 // bits
    g = K if group_size == -1 else group_size
    if K % g or N * bits % 32:
        raise UserError(f"GPTQ checkpoint {source}: {name} is {N} x {K}, which groups of {g} (or {32 // bits} "
                        "codes per int32 word) do not divide.", "The checkpoint does not match its config.json.")
    G = K // g
    qzeros = _tensor(state, f"{name}.qzeros", torch.int32, (G, N * bits // 32), source)
    scales = _tensor(state, f"{name}.scales", torch.float16, (G, N), source)
    g_idx = state.get(f"{name}.g_idx")
    if g_idx is not None:
        g_idx = _tensor(state, f"{name}.g_idx", torch.int32, (K,), source)
        if not torch.equal(g_idx, torch.arange(K, dtype=torch.int32) // g):
            raise UserError(f"GPTQ checkpoint {source}: {name}.g_idx does not put input channels in groups of {g} "
                            "consecutive channels (a desc_act checkpoint quantized without static groups); the "
                            "native layout cannot hold it.", "Use a checkpoint quantized with desc_act false or "
                            "static_groups true, or quantize the float model here with --algorithm gptq "
                            "--act_order (static groups).")
    codes = _unpack_rows(qweight, bits).t().contiguous()                 # (N, K)
    stored = _unpack_rows(qzeros.t().contiguous(), bits).t()            # (G, N)
    if fmt == "gptq":
        if bool((stored == 2 ** bits - 1).any()):
            raise UserError(f"GPTQ checkpoint {source}: {name} has a zero point of 2**{bits} in the v1 'gptq' format "
                            "(stored value 2**bits - 1 plus one), outside the code range; v1 cannot store it "
                            "correctly.", "Convert the checkpoint to checkpoint_format gptq_v2 (GPTQModel does), or "
                            "quantize the float model here with --algorithm gptq.")
        stored = stored + 1
    out = {f"{name}.packed": pack(codes, native_format(bits)),
           f"{name}.scales": scales.t().contiguous(),
           f"{name}.zeros": stored.t().contiguous().to(torch.uint8)}
    if f"{name}.bias" in state:
        out[f"{name}.bias"] = state[f"{name}.bias"]
    return out


def import_state(state: dict[str, torch.Tensor], q: dict, layers_prefix: str, linears: tuple[str, ...],
                 source) -> dict[str, torch.Tensor]:
    """The whole GPTQ state dict -> native tensor names and layouts; every decoder-layer Linear must be quantized."""
    bits, group, fmt = int(q["bits"]), int(q["group_size"]), q.get("checkpoint_format", "gptq")
    out: dict[str, torch.Tensor] = {}
    done: set[str] = set()
    for key in state:
        if key.endswith(".qweight"):
            name = key.removesuffix(".qweight")
            out.update(import_linear(state, name, bits, group, fmt, source))
            done.add(name)
    for key, t in state.items():
        base = key.rsplit(".", 1)[0]
        if base in done:
            continue
        if key.startswith(layers_prefix + ".") and base.endswith(linears) and key.endswith(".weight"):
            raise UserError(f"GPTQ checkpoint {source}: {base} is not quantized (a float {key}); this tool needs "
                            "every decoder-layer Linear quantized alike.", "Use a checkpoint quantized without "
                            "modules_to_not_convert / dynamic exclusions, or quantize the float model here.")
        out[key] = t
    return out
