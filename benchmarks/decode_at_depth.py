"""Decode speed of the native engine at a given depth of context, without prefilling it (helpers of
benchmarks/kv_precision.py and benchmarks/kv_block_size.py).

`fill(engine, context)` gives row 0 of a started engine `context` cached tokens of random content (keys and values
drawn at random in the cache's element type, int8 slot scales too): decode reads them as it reads a prefilled
cache, and decode time does not depend on the values (random weights, as every shape benchmark here), so depths
of 32k tokens are measured without a 32k-token prefill. `decode_tok_s` then times single-token steps from there.
"""
from __future__ import annotations

import time

import numpy as np
import torch


def fill(engine, context: int, seed: int = 0) -> None:
    """Row 0 of `engine` (started with batch 1) holds `context` tokens of random keys and values."""
    kv = engine.kv
    kv.reserve(np.array([context]))
    g = torch.Generator().manual_seed(seed)
    for t in kv.keys + kv.values:
        if t.dtype == torch.int8:
            t.copy_(torch.randint(-127, 128, t.shape, generator=g, dtype=torch.int8))
        else:
            t.copy_((torch.randn(t.shape, generator=g) * 0.5).to(t.dtype))
    for t in kv.scales[0] + kv.scales[1]:
        t.copy_(torch.rand(t.shape, generator=g) * 0.01)
    engine.lengths = np.array([context], np.int64)


@torch.inference_mode()
def decode_tok_s(engine, context: int, new_tokens: int, vocab: int) -> float:
    """Greedy steps after `context` cached tokens (reset to that depth first): tokens per second over
    new_tokens - 1 steps after the first."""
    engine.kv.bind()
    engine.lengths = np.array([context], np.int64)
    token = torch.tensor([[vocab // 2]])
    mask = torch.ones(1, context + new_tokens, dtype=torch.long)
    t0 = None
    for i in range(new_tokens):
        if i == 1:
            t0 = time.perf_counter()
        logits = engine.forward(token, torch.tensor([[context + i]]), mask[:, :context + i + 1])
        token = logits[:, -1].argmax(-1, keepdim=True)
    return (new_tokens - 1) / (time.perf_counter() - t0)
