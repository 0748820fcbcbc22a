"""Chunked prefill: a long call fed to an engine as consecutive calls of at most `prefill_chunk` tokens.

Every engine (runtime/engines.py interface) keeps its KV cache between calls, so feeding the columns of a
left-padded call (input_ids, position_ids (B, T); attention_mask (B, S)) in order, chunk by chunk, computes what
the one call computes: chunk [c0, c1) gets input_ids[:, c0:c1], position_ids[:, c0:c1] and the mask up to its own
last column, attention_mask[:, :S - T + c1]. What grows with the prompt inside an engine (the activations of every
token through a layer, the (T, S) attention scores and masks) then grows with the chunk instead.

Chunks are `chunk` columns each, left to right; a final remainder of one token joins the chunk before it (a
one-token call is a decode step, which some engines compute with other numerics: the tt target's *_decode op
groups). Rows of a left-padded batch may have no real token in an early chunk (a short prompt starts later);
engines take such rows (their logits are zero or ignored, their cache unchanged).

`engine.prefill_chunk` is the engine's chunk (0 = one call); each engine class sets a default measured on this
machine (docs/architecture.md, "Chunked prefill"); `--prefill_chunk N` overrides it. An engine with
`chunks_batches = False` (a mesh of ONNX Runtime shards: GroupQueryAttention takes several new tokens after a past
for one row at a time only, and the shards run the rows together) chunks batches of one row only.
"""
from __future__ import annotations

import torch

from ..errors import UserError

MIN_CHUNK = 16
# Each engine's default chunk, in tokens (`engine.prefill_chunk`); measured by benchmarks/prefill_chunk.py.
DEFAULT_PREFILL_CHUNK = {"native": 128, "onnxruntime": 512, "tt": 256, "torch": 1024}


def default_prefill_chunk(engine_name: str) -> int:
    """The default chunk of an engine by its name (native/..., onnxruntime/..., tt-emulation ..., else torch)."""
    for prefix in ("native", "onnxruntime", "tt"):
        if engine_name.startswith(prefix):
            return DEFAULT_PREFILL_CHUNK[prefix]
    return DEFAULT_PREFILL_CHUNK["torch"]


def check_prefill_chunk(chunk: int | None) -> int | None:
    """--prefill_chunk: None (the engine's default), 0 (one call) or at least MIN_CHUNK tokens."""
    if chunk is not None and chunk != 0 and chunk < MIN_CHUNK:
        raise UserError(f"--prefill_chunk {chunk} is invalid.",
                        f"Use 0 (prefill in one call) or a chunk of at least {MIN_CHUNK} tokens.")
    return chunk


def chunk_bounds(T: int, chunk: int) -> list[tuple[int, int]]:
    """Column ranges [c0, c1) covering 0..T in order: `chunk` columns each (chunk 0: one range); a last range of
    one column is merged into the one before it."""
    if chunk <= 0 or T <= chunk:
        return [(0, T)]
    bounds = [(c0, min(c0 + chunk, T)) for c0 in range(0, T, chunk)]
    if bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], T)]
    return bounds


def forward_chunked(engine, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor,
                    last_only: bool = True, chunk: int | None = None) -> torch.Tensor:
    """engine.forward over (B, T) inputs in chunks of `chunk` tokens (None: engine.prefill_chunk) -> the logits the
    one call returns: (B, 1, V) with last_only, else (B, T, V)."""
    chunk = getattr(engine, "prefill_chunk", 0) if chunk is None else chunk
    B, T = input_ids.shape
    if B > 1 and not getattr(engine, "chunks_batches", True):
        chunk = 0
    bounds = chunk_bounds(T, chunk or 0)
    if len(bounds) == 1:
        return engine.forward(input_ids, position_ids, attention_mask, last_only=last_only)
    before = attention_mask.shape[1] - T                   # cache slots filled before this call
    parts = []
    for c0, c1 in bounds:
        logits = engine.forward(input_ids[:, c0:c1], position_ids[:, c0:c1], attention_mask[:, :before + c1],
                                last_only=last_only)
        if not last_only:
            parts.append(logits)
    return logits if last_only else torch.cat(parts, dim=1)
