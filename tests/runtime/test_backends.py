"""The target registry and the cpu target's engine choice."""
from __future__ import annotations

import pytest

from edgeawq.errors import UserError
from edgeawq.cpu_backend import native_build
from edgeawq.cpu_backend.backend import cpu_engine_choice
from edgeawq.runtime.backends import BACKENDS, EngineOptions, require
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


def test_quantized_checkpoints_default_to_the_native_engine_else_the_onnx_graph(quantized, checkpoints,
                                                                               monkeypatch):
    expected = "native" if native_build.build_problem() is None else "onnx"
    assert cpu_engine_choice(load_model(quantized), EngineOptions()) == expected
    assert cpu_engine_choice(load_model(quantized), EngineOptions(engine="onnx")) == "onnx"
    assert cpu_engine_choice(load_model(checkpoints["llama2"]), EngineOptions()) == "torch"       # float
    assert cpu_engine_choice(load_model(quantized), EngineOptions(engine="torch")) == "torch"
    assert cpu_engine_choice(load_model(quantized), EngineOptions(flash_attention=True)) == "torch"
    assert cpu_engine_choice(load_model(quantized, "fp32", "aie"), EngineOptions()) == "torch"


def test_without_the_native_kernels_auto_falls_back_and_native_is_refused(quantized, monkeypatch):
    monkeypatch.setattr(native_build, "unavailable_reason", lambda: "no C++ compiler was found (test)")
    assert cpu_engine_choice(load_model(quantized), EngineOptions()) == "onnx"
    with pytest.raises(UserError, match="--engine native cannot run this model: no C\\+\\+ compiler"):
        cpu_engine_choice(load_model(quantized), EngineOptions(engine="native"))


def test_native_engine_for_a_float_model_is_refused(checkpoints):
    with pytest.raises(UserError, match="llama2|not quantized"):
        cpu_engine_choice(load_model(checkpoints["llama2"]), EngineOptions(engine="native"))


@pytest.mark.parametrize("engine", ["onnx", "native"])
def test_graph_engines_with_a_torch_only_option_are_refused(quantized, engine):
    with pytest.raises(UserError, match=f"--engine {engine}"):
        cpu_engine_choice(load_model(quantized), EngineOptions(engine=engine, flash_attention=True))


def test_cpu_onnx_engine_runs_on_the_cpu_provider(quantized, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEAWQ_CACHE", str(tmp_path))
    engine = require("cpu").make_engine(load_model(quantized), EngineOptions(engine="onnx", ep="VitisAI",
                                                                              strict_ep=True))
    assert engine.name == "onnxruntime/CPUExecutionProvider"     # --ep/--strict_ep belong to the npu target


def test_auto_picks_an_engine_that_runs_what_onnx_cannot(tmp_path, monkeypatch):
    """w8 per channel on default-llama: down_proj's K = 768 is no MatMulNBits block size. auto runs the native
    engine (8-bit codes), or PyTorch without the native kernels, never the graph; asking for the graph names the
    target asked for."""
    from edgeawq.default_models import DEFAULT_MODELS

    monkeypatch.setenv("EDGEAWQ_CACHE", str(tmp_path / "cache"))
    quantize_tiny(DEFAULT_MODELS["default-llama"], tmp_path / "w8", w_bit=8, group_size=-1, awq_mode="none",
                  algorithm="pergrp")
    loaded = load_model(tmp_path / "w8")
    assert cpu_engine_choice(loaded, EngineOptions()) == ("native" if native_build.build_problem() is None
                                                          else "torch")
    with pytest.raises(UserError, match="--target cpu --engine onnx cannot run this model: .*K=768.*power of two"):
        require("cpu").make_engine(loaded, EngineOptions(engine="onnx"))
    with pytest.raises(UserError, match="--target npu cannot run this model: .*power of two"):
        require("npu").make_engine(loaded, EngineOptions())
    monkeypatch.setattr(native_build, "unavailable_reason", lambda: "no C++ compiler was found (test)")
    assert cpu_engine_choice(loaded, EngineOptions()) == "torch"
