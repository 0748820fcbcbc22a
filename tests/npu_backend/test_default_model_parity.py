"""Acceptance (issue 5): every default model at w4 g128 and w3 g128, `--target npu` (ONNX Runtime, CPU provider,
accuracy_level 4) against `--target cpu` (the PyTorch reference, its default bf16 activations): greedy tokens
equal on the decode prompts, or the first divergence has logits PCC >= 0.999; last-token logits PCC >= 0.999
on the perplexity windows; perplexity within 0.5%.

The checkpoints are RTN-quantized here to keep the test fast (parity does not depend on how codes were chosen);
benchmarks/npu_parity.py reports the same measures for AWQ checkpoints.
"""
from __future__ import annotations

import pytest

from edgeawq.default_models import DEFAULT_MODELS
from edgeawq.runtime.backends import EngineOptions, require
from edgeawq.runtime.model_loader import load_model

from ..conftest import assert_engine_parity, quantize_tiny


@pytest.mark.slow
@pytest.mark.parametrize("model", ["default-llama", "default-qwen2"])
@pytest.mark.parametrize("bits", [4, 3])
def test_npu_matches_cpu_on_default_models(model, bits, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEAWQ_CACHE", str(tmp_path / "cache"))
    ckpt = tmp_path / "q"
    quantize_tiny(DEFAULT_MODELS[model], ckpt, w_bit=bits, group_size=128, awq_mode="none", algorithm="pergrp")
    cpu_loaded = load_model(ckpt)
    cpu = require("cpu").make_engine(cpu_loaded, EngineOptions(flash_attention=True))
    npu = require("npu").make_engine(load_model(ckpt), EngineOptions(ep="CPU"))
    assert_engine_parity(cpu, npu, cpu_loaded)
