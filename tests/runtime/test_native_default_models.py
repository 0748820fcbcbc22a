"""Acceptance of the native engine on the shipped models: every default model at w4 g128 and w3 g128, the
native engine (--engine native) against the PyTorch reference (--engine torch, bf16 activations) with the
measures of the npu parity test (tests/conftest.assert_engine_parity)."""
from __future__ import annotations

import pytest

from edgeawq.default_models import DEFAULT_MODELS
from edgeawq.kernels import native_build
from edgeawq.runtime.backends import EngineOptions, require
from edgeawq.runtime.model_loader import load_model

from ..conftest import assert_engine_parity, quantize_tiny

REASON = native_build.unavailable_reason()


@pytest.mark.slow
@pytest.mark.skipif(REASON is not None, reason=f"native kernels cannot build here: {REASON}")
@pytest.mark.parametrize("model", ["default-llama", "default-qwen2"])
@pytest.mark.parametrize("bits", [4, 3])
def test_native_matches_the_reference_on_default_models(model, bits, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEAWQ_CACHE", str(tmp_path / "cache"))
    ckpt = tmp_path / "q"
    quantize_tiny(DEFAULT_MODELS[model], ckpt, w_bit=bits, group_size=128, awq_mode="none", algorithm="pergrp")
    reference_loaded = load_model(ckpt)
    reference = require("cpu").make_engine(reference_loaded, EngineOptions(flash_attention=True))
    native = require("cpu").make_engine(load_model(ckpt), EngineOptions(engine="native"))
    assert native.name.startswith("native/")
    assert_engine_parity(reference, native, reference_loaded)
