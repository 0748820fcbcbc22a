"""The target registry and the cpu target's engine choice."""
from __future__ import annotations

import pytest

from edgeawq.errors import UserError
from edgeawq.runtime.backends import BACKENDS, EngineOptions, cpu_engine_choice, require
from edgeawq.runtime.model_loader import load_model

from ..conftest import quantize_tiny


@pytest.fixture(scope="module")
def quantized(checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("backends") / "q"
    quantize_tiny(checkpoints["llama2"], out, awq_mode="none", algorithm="pergrp")
    return out


def test_registry_lists_cpu_and_npu():
    assert {"cpu", "npu"} <= set(BACKENDS)
    with pytest.raises(UserError, match="Unknown target 'gpu'"):
        require("gpu")


def test_quantized_checkpoints_default_to_the_onnx_graph(quantized, checkpoints):
    assert cpu_engine_choice(load_model(quantized), EngineOptions()) == "onnx"
    assert cpu_engine_choice(load_model(checkpoints["llama2"]), EngineOptions()) == "torch"       # float
    assert cpu_engine_choice(load_model(quantized), EngineOptions(engine="torch")) == "torch"
    assert cpu_engine_choice(load_model(quantized), EngineOptions(flash_attention=True)) == "torch"
    assert cpu_engine_choice(load_model(quantized, "fp32", "aie"), EngineOptions()) == "torch"


def test_onnx_engine_with_a_torch_only_option_is_refused(quantized):
    with pytest.raises(UserError, match="--engine onnx"):
        cpu_engine_choice(load_model(quantized), EngineOptions(engine="onnx", flash_attention=True))


def test_cpu_onnx_engine_runs_on_the_cpu_provider(quantized, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEAWQ_CACHE", str(tmp_path))
    engine = require("cpu").make_engine(load_model(quantized), EngineOptions(ep="VitisAI", strict_ep=True))
    assert engine.name == "onnxruntime/CPUExecutionProvider"     # --ep/--strict_ep belong to the npu target
