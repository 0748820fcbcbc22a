"""Logits of both engines equal the plain transformers model (fp32, max abs diff <= 1e-4), every family."""
from __future__ import annotations

import pytest
import torch
import transformers

from edgeawq.runtime.engines import StaticCacheEngine, TransformersEngine
from edgeawq.runtime.generate import left_pad
from edgeawq.runtime.model_loader import load_model

from ..conftest import FAMILY_CONFIGS

PROMPTS = [list(range(5, 25)), list(range(40, 52)), [7, 8, 9]]  # lengths 20, 12, 3 (longer than the window 8)


def reference_logits(path, ids, mask, positions, dtype=torch.float32):
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=positions).logits


def prepare(path, engine_cls):
    """-> (engine started for the batch, ids, mask, positions, transformers' logits)."""
    ids, mask, positions = left_pad(PROMPTS, pad_id=2)
    engine = engine_cls(load_model(path))
    engine.start(ids.shape[0], 64)
    return engine, ids, mask, positions, reference_logits(path, ids, mask, positions)


@pytest.mark.parametrize("family", sorted(FAMILY_CONFIGS))
@pytest.mark.parametrize("engine_cls", [TransformersEngine, StaticCacheEngine])
def test_prefill_logits_match_transformers(checkpoints, family, engine_cls):
    engine, ids, mask, positions, expected = prepare(checkpoints[family], engine_cls)
    got = engine.forward(ids, positions, mask, last_only=False)
    real = mask.bool()
    assert (got[real] - expected[real]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("family", sorted(FAMILY_CONFIGS))
@pytest.mark.parametrize("engine_cls", [TransformersEngine, StaticCacheEngine])
def test_incremental_decode_logits_match_full_forward(checkpoints, family, engine_cls):
    """Prefill 6 tokens, then feed the rest one at a time through the cache: same logits as one full pass."""
    engine, ids, mask, positions, expected = prepare(checkpoints[family], engine_cls)
    steps = [engine.forward(ids[:, :6], positions[:, :6], mask[:, :6], last_only=False)]
    for t in range(6, ids.shape[1]):
        steps.append(engine.forward(ids[:, t:t + 1], positions[:, t:t + 1], mask[:, :t + 1]))
    got = torch.cat(steps, dim=1)
    real = mask.bool()
    assert (got[real] - expected[real]).abs().max().item() <= 1e-4


def test_fused_model_has_grouped_projections(checkpoints):
    loaded = load_model(checkpoints["qwen2"])
    StaticCacheEngine(loaded)
    layer = loaded.model.model.layers[0]
    names = {n for n, _ in layer.named_modules()}
    assert {"self_attn.qkv_proj", "mlp.gate_up_proj"} <= names
    assert not {"self_attn.q_proj", "mlp.gate_proj"} & names
    assert layer.self_attn.qkv_proj.bias is not None  # Qwen2 q/k/v bias kept


def test_static_cache_is_not_reallocated_during_decode(checkpoints):
    engine = StaticCacheEngine(load_model(checkpoints["llama3"]))
    ids, mask, positions = left_pad(PROMPTS, pad_id=2)
    engine.start(ids.shape[0], 64)
    k_ptr, v_ptr = engine.cache.k.data_ptr(), engine.cache.v.data_ptr()
    engine.forward(ids, positions, mask)
    for t in range(10):
        mask = torch.cat([mask, torch.ones(mask.shape[0], 1, dtype=mask.dtype)], dim=1)
        engine.forward(torch.full((ids.shape[0], 1), 9), positions[:, -1:] + 1 + t, mask)
        assert (engine.cache.k.data_ptr(), engine.cache.v.data_ptr()) == (k_ptr, v_ptr)
    assert engine.cache.length == ids.shape[1] + 10
    engine.start(ids.shape[0], 64)  # a new generation with the same batch reuses the storage
    assert engine.cache.k.data_ptr() == k_ptr and engine.cache.length == 0


def test_engines_report_the_weights_and_kv_cache_they_hold(checkpoints):
    """weights_bytes: every parameter and buffer once; kv_bytes: the dynamic cache's tensors (they grow with the
    tokens fed), a static cache's whole storage, a paged cache's whole pool."""
    loaded = load_model(checkpoints["llama3"])
    c = loaded.config
    per_slot = 2 * c.num_hidden_layers * c.num_key_value_heads * (c.hidden_size // c.num_attention_heads) * 4
    ids, mask, positions = left_pad(PROMPTS, pad_id=2)                               # (3, 20)
    dynamic = TransformersEngine(loaded)
    dynamic.start(3, 64)
    dynamic.forward(ids, positions, mask)
    params = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    assert params <= dynamic.weights_bytes < params + 1024 * 1024            # the buffers: RoPE frequencies
    assert dynamic.kv_bytes == 3 * 20 * per_slot
    static = StaticCacheEngine(load_model(checkpoints["llama3"]))
    static.start(3, 64)
    assert static.kv_bytes == 3 * 64 * per_slot
    paged = StaticCacheEngine(load_model(checkpoints["llama3"]), kv_block_size=16, kv_max_blocks=5)
    paged.start(3, 64)
    assert paged.kv_bytes == (5 + 1) * 16 * per_slot                         # the pool and its scratch block
