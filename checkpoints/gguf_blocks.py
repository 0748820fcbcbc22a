"""GGUF Q4_0 blocks taken over as this tool's per-group codes, without re-rounding (`--algorithm import`).

A Q4_0 tensor (llama.cpp's ggml-common.h, block_q4_0) of shape (N, K) stores each row as K/32 blocks of 18 bytes:
  d   float16, 2 bytes (little-endian)
  qs  16 bytes: byte j holds weight j in its low nibble and weight j + 16 in its high nibble
and llama.cpp dequantizes weight i of a block as (q_i - 8) * d, computed in float32.

That is exactly this tool's asymmetric 4-bit group of 32 with codes q (0..15), zero point 8 and the fp16 scale d:
`kernels.quantizer.dequantize` computes (codes - zeros) * scales in float32, so the imported checkpoint's weights
equal `gguf.quants.dequantize` bit for bit.

Q4_1 blocks (d, m float16, value q * d + m) have a float minimum that an integer zero point cannot hold exactly
((q - z) * d = q * d + m needs m / d to be an integer), so they are refused here with the alternatives; the other
GGUF types are not per-group 4-bit codes at all.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import UserError
from ..kernels.quantizer import QuantizedWeight, QuantSpec
from .gguf_format import GGUFTensors, unpermute

BLOCK = 32
BLOCK_BYTES = 2 + BLOCK // 2
IMPORT_SPEC = QuantSpec(bits=4, group_size=BLOCK, zero_point=True)


def _require_q4_0(state: GGUFTensors, name: str) -> None:
    import gguf

    t = state[name]
    if t.tensor_type != gguf.GGMLQuantizationType.Q4_0:
        hint = ("Q4_1 blocks (q * d + m) have a float minimum that integer zero points cannot hold without "
                "re-rounding." if t.tensor_type == gguf.GGMLQuantizationType.Q4_1 else
                "Only Q4_0 blocks are per-group 4-bit codes this format stores as they are.")
        raise UserError(f"GGUF file {state.path}: tensor {t.name} is {t.tensor_type.name}, not Q4_0, so "
                        f"--algorithm import cannot take its blocks over. {hint}",
                        "Re-quantize instead: --algorithm awq or --algorithm pergrp (any --group_size that fits); "
                        "or import a Q4_0 GGUF file (llama-quantize MODEL.gguf OUT.gguf Q4_0).")


def q4_0_weight(state: GGUFTensors, name: str) -> QuantizedWeight:
    """The Q4_0 tensor `name` (a transformers name, e.g. model.layers.0.self_attn.q_proj.weight) as codes uint8
    (N, K), scales float16 (N, K/32) and zeros uint8 (N, K/32) = 8; q/k rows un-permuted like `GGUFTensors.load`."""
    _require_q4_0(state, name)
    t = state[name]
    N, K = (int(d) for d in reversed(t.shape.tolist()))
    raw = np.asarray(t.data, dtype=np.uint8).reshape(N, K // BLOCK, BLOCK_BYTES)     # (N, G, 18)
    d = raw[..., :2].copy().view(np.float16)[..., 0]                                # (N, G)
    qs = raw[..., 2:]                                                                # (N, G, 16)
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).reshape(N, K)             # (N, K): j, then j + 16
    codes_t, scales_t = torch.from_numpy(codes.copy()), torch.from_numpy(d.copy())
    if not torch.isfinite(scales_t).all():
        raise UserError(f"GGUF file {state.path}: tensor {t.name} holds non-finite block scales.",
                        "Re-convert or re-download the file.")
    zeros_t = torch.full(scales_t.shape, 8, dtype=torch.uint8)
    if state.permuted and name.endswith(".weight") and name.split(".")[-2] in state.heads:
        heads = state.heads[name.split(".")[-2]]
        codes_t, scales_t, zeros_t = (unpermute(x, heads) for x in (codes_t, scales_t, zeros_t))
    return QuantizedWeight(codes_t.contiguous(), scales_t.contiguous(), zeros_t.contiguous(), IMPORT_SPEC)


def check_importable(state, family, spec: QuantSpec, lm_head: bool, source: str) -> None:
    """`--algorithm import` needs a GGUF source whose decoder-layer Linears are all Q4_0, and the Q4_0 grid
    (--w_bit 4 --group_size 32, zero points); checked before any tensor is read."""
    if not isinstance(state, GGUFTensors):
        raise UserError(f"--algorithm import takes over a GGUF file's Q4_0 blocks, but {source} is not a GGUF file.",
                        "Pass --model FILE.gguf, or quantize this model with --algorithm awq or pergrp.")
    if (spec.bits, spec.group_size, spec.zero_point) != (4, BLOCK, True):
        raise UserError(f"--algorithm import keeps Q4_0 blocks as they are: 4 bits, groups of {BLOCK}, zero point "
                        f"8; --w_bit {spec.bits} --group_size {spec.group_size}"
                        f"{' --symmetric' if not spec.zero_point else ''} asks for another grid.",
                        f"Pass --w_bit 4 --group_size {BLOCK} (without --symmetric), or re-quantize with "
                        "--algorithm awq or pergrp.")
    if lm_head:
        raise UserError("--algorithm import does not quantize lm_head: the GGUF head (often Q6_K or Q8_0) has no "
                        "4-bit blocks to keep.", "Drop --lm_head (the head is stored as float), or re-quantize "
                        "with --algorithm pergrp --lm_head.")
    for name in state:
        if name.startswith(family.layers + ".") and name.removesuffix(".weight").endswith(family.linears) \
                and name.endswith(".weight"):
            _require_q4_0(state, name)


def import_blocks(state: GGUFTensors, family, n_layers: int, sink) -> None:
    """Write every decoder-layer Linear of a Q4_0 GGUF file to `sink` as its own codes, one layer at a time; the
    other tensors (norms, biases, embedding, head) are dequantized to float32 as `GGUFTensors.load` reads them."""
    for i in range(n_layers):
        prefix = f"{family.layers}.{i}."
        weights = {prefix + rel + ".weight" for rel in family.linears}
        floats = {k: state.load(k) for k in state if k.startswith(prefix) and k not in weights}
        sink.write(floats, {w.removesuffix(".weight"): q4_0_weight(state, w) for w in sorted(weights)})
    sink.write({k: state.load(k) for k in state if not k.startswith(family.layers + ".")}, {})
