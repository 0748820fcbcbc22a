"""benchmarks/decode_at_depth.py fills a native engine's cache to a depth and decodes from it (kv_precision.py and
kv_block_size.py measure with it): the filled cache holds the blocks of that depth, and decoding from it reads
them (a deeper cache gives other logits)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from edgeawq.cpu_backend import native_build
from edgeawq.runtime.backends import BACKENDS, EngineOptions
from edgeawq.runtime.model_loader import load_model

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from decode_at_depth import decode_tok_s, fill  # noqa: E402


@pytest.mark.parametrize("kv_dtype", ["fp32", "int8"])
def test_fill_then_decode(rtn_llama3, kv_dtype):
    if native_build.unavailable_reason() is not None:
        pytest.skip(f"native kernels cannot build here: {native_build.unavailable_reason()}")
    engine = BACKENDS["cpu"].make_engine(load_model(str(rtn_llama3), "fp32", "fp32"),
                                         EngineOptions(engine="native", kv_block_size=32, kv_dtype=kv_dtype))
    last = {}
    for depth in (100, 200):
        engine.start(1, 240)
        fill(engine, depth)
        assert engine.kv.blocks_in_use == -(-depth // 32)
        assert decode_tok_s(engine, depth, 4, 4096) > 0 and engine.lengths[0] == depth + 4
        last[depth] = engine.forward(torch.tensor([[7]]), torch.tensor([[depth + 4]]),
                                     torch.ones(1, depth + 5, dtype=torch.long))
    assert not torch.allclose(last[100], last[200])
