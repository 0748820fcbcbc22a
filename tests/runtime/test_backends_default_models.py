"""Acceptance of the fast engines on the shipped models (issues 4 and 5): every default model at w4 g128 and
w3 g128 (RTN), each fast engine against `--target cpu --engine torch` (the PyTorch reference, bf16 activations):
greedy tokens equal on the decode prompts, or the first divergence has logits PCC >= 0.999; last-token logits
PCC >= 0.999 on the perplexity windows; perplexity within 0.5% (tests/conftest.assert_engine_parity).

* native: `--target cpu --engine native` (the cpu default; int8 activations, docs/native_engine.md);
* npu: `--target npu --ep CPU` (the exported ONNX graph, MatMulNBits accuracy_level 4).

benchmarks/npu_parity.py reports the npu measures for AWQ checkpoints.
"""
from __future__ import annotations

import pytest

from edgeawq.cpu_backend import native_build
from edgeawq.runtime.backends import EngineOptions, require
from edgeawq.runtime.model_loader import load_model

from ..conftest import assert_engine_parity, rtn_default_checkpoint

FAST = {"native": ("cpu", EngineOptions(engine="native")), "npu": ("npu", EngineOptions(ep="CPU"))}


@pytest.mark.slow
@pytest.mark.parametrize("model", ["default-llama", "default-qwen2"])
@pytest.mark.parametrize("bits", [4, 3])
@pytest.mark.parametrize("engine", sorted(FAST))
def test_fast_engine_matches_the_reference_on_default_models(engine, model, bits, tmp_path, monkeypatch):
    if engine == "native" and native_build.unavailable_reason():
        pytest.skip(f"native kernels cannot build here: {native_build.unavailable_reason()}")
    monkeypatch.setenv("EDGEAWQ_CACHE", str(tmp_path / "cache"))
    ckpt = rtn_default_checkpoint(model, bits, tmp_path)
    reference_loaded = load_model(ckpt)
    reference = require("cpu").make_engine(reference_loaded, EngineOptions(flash_attention=True))
    target, options = FAST[engine]
    candidate = require(target).make_engine(load_model(ckpt), options)
    assert_engine_parity(reference, candidate, reference_loaded)
