"""GGUF Q4_0 and Q4_1 blocks taken over as this tool's per-group codes, without re-rounding (`--algorithm import`).

A Q4_0 tensor (llama.cpp's ggml-common.h, block_q4_0) of shape (N, K) stores each row as K/32 blocks of 18 bytes:
  d   float16, 2 bytes (little-endian)
  qs  16 bytes: byte j holds weight j in its low nibble and weight j + 16 in its high nibble
and llama.cpp dequantizes weight i of a block as (q_i - 8) * d, computed in float32.
A Q4_1 block (block_q4_1) is 20 bytes: d float16, m float16, then the same 16 bytes of nibbles; weight i is
q_i * d + m, computed in float32.

Q4_0 is exactly this tool's asymmetric 4-bit group of 32 with codes q (0..15), zero point 8 and the fp16 scale d.
Q4_1 is the same group with zero point 0 plus the per-group float16 minimum m (QuantSpec.mins): an integer zero
point cannot hold m ((q - z) * d = q * d + m needs m / d to be an integer). `kernels.quantizer.dequantize` computes
(codes - zeros) * scales (+ mins) in float32, so the imported checkpoint's weights equal `gguf.quants.dequantize`
bit for bit in both cases. The other GGUF types are not per-group 4-bit codes at all.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import UserError
from ..kernels.quantizer import QuantizedWeight, QuantSpec
from .gguf_format import GGUFTensors, unpermute

BLOCK = 32
NIBBLE_BYTES = BLOCK // 2
IMPORTABLE = ("Q4_0", "Q4_1")


def block_type(state: GGUFTensors, name: str) -> str:
    """"Q4_0" or "Q4_1" for an importable tensor; anything else is a UserError naming the tensor and its type."""
    t = state[name]
    kind = t.tensor_type.name
    if kind not in IMPORTABLE:
        raise UserError(f"GGUF file {state.path}: tensor {t.name} is {kind}, not Q4_0 or Q4_1, so --algorithm "
                        "import cannot take its blocks over: only those types are per-group 4-bit codes that this "
                        "format stores as they are.",
                        "Re-quantize instead: --algorithm awq or --algorithm pergrp (any --group_size that fits); "
                        "or import a Q4_0 / Q4_1 GGUF file (llama-quantize MODEL.gguf OUT.gguf Q4_0).")
    return kind


def import_spec(kind: str) -> QuantSpec:
    """The grid of imported blocks: 4 bits, groups of 32, zero points; Q4_1 adds the per-group minimums."""
    return QuantSpec(bits=4, group_size=BLOCK, zero_point=True, mins=kind == "Q4_1")


def block_weight(state: GGUFTensors, name: str) -> QuantizedWeight:
    """The Q4_0 / Q4_1 tensor `name` (a transformers name, e.g. model.layers.0.self_attn.q_proj.weight) as codes
    uint8 (N, K), scales float16 (N, K/32), zeros uint8 (N, K/32) (8 for Q4_0, 0 for Q4_1) and, for Q4_1, mins
    float16 (N, K/32); q/k rows un-permuted like `GGUFTensors.load`."""
    kind = block_type(state, name)
    head = 2 if kind == "Q4_0" else 4                                                # d (and m), fp16
    t = state[name]
    N, K = (int(d) for d in reversed(t.shape.tolist()))
    raw = np.asarray(t.data, dtype=np.uint8).reshape(N, K // BLOCK, head + NIBBLE_BYTES)   # (N, G, 18 or 20)
    halves = raw[..., :head].copy().view(np.float16)                                 # (N, G, 1 or 2)
    qs = raw[..., head:]                                                             # (N, G, 16)
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).reshape(N, K)             # (N, K): j, then j + 16
    parts = [torch.from_numpy(codes.copy()), torch.from_numpy(halves[..., 0].copy())]
    if not bool(np.isfinite(halves).all()):
        raise UserError(f"GGUF file {state.path}: tensor {t.name} holds non-finite block scales or minimums.",
                        "Re-convert or re-download the file.")
    parts.append(torch.full(parts[1].shape, 8 if kind == "Q4_0" else 0, dtype=torch.uint8))
    if kind == "Q4_1":
        parts.append(torch.from_numpy(halves[..., 1].copy()))
    if state.permuted and name.endswith(".weight") and name.split(".")[-2] in state.heads:
        heads = state.heads[name.split(".")[-2]]
        parts = [unpermute(x, heads) for x in parts]
    codes_t, scales_t, zeros_t, *mins_t = (x.contiguous() for x in parts)
    return QuantizedWeight(codes_t, scales_t, zeros_t, import_spec(kind), mins_t[0] if mins_t else None)


def check_importable(state, family, spec: QuantSpec, lm_head: bool, source: str) -> QuantSpec:
    """`--algorithm import` needs a GGUF source whose decoder-layer Linears are all Q4_0 or all Q4_1, and their
    grid (--w_bit 4 --group_size 32, zero points); checked before any tensor is read. -> the checkpoint's spec."""
    if not isinstance(state, GGUFTensors):
        raise UserError(f"--algorithm import takes over a GGUF file's Q4_0 / Q4_1 blocks, but {source} is not a "
                        "GGUF file.", "Pass --model FILE.gguf, or quantize this model with --algorithm awq or pergrp.")
    if (spec.bits, spec.group_size, spec.zero_point) != (4, BLOCK, True):
        raise UserError(f"--algorithm import keeps Q4_0 / Q4_1 blocks as they are: 4 bits, groups of {BLOCK}, "
                        f"zero points; --w_bit {spec.bits} --group_size {spec.group_size}"
                        f"{' --symmetric' if not spec.zero_point else ''} asks for another grid.",
                        f"Pass --w_bit 4 --group_size {BLOCK} (without --symmetric), or re-quantize with "
                        "--algorithm awq or pergrp.")
    if lm_head:
        raise UserError("--algorithm import does not quantize lm_head: the GGUF head (often Q6_K or Q8_0) has no "
                        "4-bit blocks to keep.", "Drop --lm_head (the head is stored as float), or re-quantize "
                        "with --algorithm pergrp --lm_head.")
    kinds = {block_type(state, name): name for name in state
             if name.startswith(family.layers + ".") and name.removesuffix(".weight").endswith(family.linears)
             and name.endswith(".weight")}
    if len(kinds) > 1:
        raise UserError(f"GGUF file {state.path} mixes Q4_0 and Q4_1 decoder Linears ({kinds['Q4_0']} is Q4_0, "
                        f"{kinds['Q4_1']} is Q4_1); one checkpoint holds one grid.",
                        "Re-quantize with --algorithm awq or pergrp, or convert the file to one type.")
    return import_spec(next(iter(kinds)))


def import_blocks(state: GGUFTensors, family, n_layers: int, sink) -> None:
    """Write every decoder-layer Linear of a Q4_0 / Q4_1 GGUF file to `sink` as its own codes, one layer at a time; the
    other tensors (norms, biases, embedding, head) are dequantized to float32 as `GGUFTensors.load` reads them."""
    for i in range(n_layers):
        prefix = f"{family.layers}.{i}."
        weights = {prefix + rel + ".weight" for rel in family.linears}
        floats = {k: state.load(k) for k in state if k.startswith(prefix) and k not in weights}
        sink.write(floats, {w.removesuffix(".weight"): block_weight(state, w) for w in sorted(weights)})
    sink.write({k: state.load(k) for k in state if not k.startswith(family.layers + ".")}, {})
