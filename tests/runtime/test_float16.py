"""`--dtype fp16`: the float model loads and computes in float16 on the PyTorch engines (logits track transformers'
own float16 forward and the float32 one), KV caches follow the dtype, and each load dtype is its own model to the
weight caches (fingerprints differ)."""
from __future__ import annotations

import pytest
import torch

from edgeawq.evaluation.parity import pcc
from edgeawq.runtime.engines import StaticCacheEngine, TransformersEngine
from edgeawq.runtime.generate import left_pad
from edgeawq.runtime.model_identity import fingerprint_of, source_fingerprint
from edgeawq.runtime.model_loader import load_model

from ..conftest import FAMILY_CONFIGS
from .test_engines import PROMPTS, reference_logits


def test_fp16_load_holds_float16_weights(checkpoints):
    loaded = load_model(checkpoints["llama3"], "fp16")
    assert loaded.dtype == torch.float16
    floats = [p for p in loaded.model.parameters() if p.is_floating_point()]
    assert floats and all(p.dtype == torch.float16 for p in floats)


@pytest.mark.parametrize("family", sorted(FAMILY_CONFIGS))
@pytest.mark.parametrize("engine_cls", [TransformersEngine, StaticCacheEngine])
def test_fp16_logits_track_transformers(checkpoints, family, engine_cls):
    ids, mask, positions = left_pad(PROMPTS, pad_id=2)
    engine = engine_cls(load_model(checkpoints[family], "fp16"))
    engine.start(ids.shape[0], 64)
    got = engine.forward(ids, positions, mask, last_only=False).float()
    real = mask.bool()
    half = reference_logits(checkpoints[family], ids, mask, positions, torch.float16).float()
    full = reference_logits(checkpoints[family], ids, mask, positions)
    scale = full[real].abs().max()
    assert (got[real] - half[real]).abs().max() <= 2e-3 * scale      # float16 rounding of a different op order
    assert (got[real] - full[real]).abs().max() <= 1e-2 * scale      # the float16 model is close to the float32 one
    assert pcc(got[real], full[real]) >= 0.9999
    assert not torch.equal(got[real], full[real])                    # it really computed in float16


def test_static_cache_is_float16(checkpoints):
    engine = StaticCacheEngine(load_model(checkpoints["qwen2"], "fp16"))
    engine.start(2, 32)
    assert engine.cache.fits(2, torch.float16) and not engine.cache.fits(2, torch.float32)


def test_each_load_dtype_is_its_own_model_to_the_caches(checkpoints):
    path = checkpoints["llama3"]
    prints = {dtype: fingerprint_of(load_model(path, dtype)) for dtype in ("fp32", "bf16", "fp16")}
    assert prints["fp32"] == source_fingerprint(path)                 # fp32 caches keep their keys
    assert prints["bf16"] == f"{prints['fp32']}:bf16" and prints["fp16"] == f"{prints['fp32']}:fp16"
