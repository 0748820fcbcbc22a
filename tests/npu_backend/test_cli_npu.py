"""`run_awq` with --target npu and export: runs, reports the provider, and one test per user error."""
from __future__ import annotations

import importlib.util
import json

import pytest

from ..conftest import quantize_tiny
from ..test_cli import assert_user_error, run


@pytest.fixture(scope="module")
def quantized(checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli_npu") / "q"
    quantize_tiny(checkpoints["qwen2"], out, awq_mode="none", algorithm="pergrp")
    return out


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEAWQ_CACHE", str(tmp_path / "cache"))


def test_decode_reports_the_provider(quantized, capsys):
    code, out, err = run(["--task", "decode", "--target", "npu", "--model", str(quantized), "--prompt", "The hacker",
                          "--max_new_tokens", "4", "--ignore_eos"], capsys)
    assert code == 0 and out.startswith("The hacker")
    assert "[npu] execution provider: CPUExecutionProvider" in err
    assert "engine onnxruntime/CPUExecutionProvider" in err


def test_benchmark_reports_npu_next_to_cpu(quantized, capsys):
    code, out, _ = run(["--task", "benchmark", "--target", "npu", "--model", str(quantized), "--prompt_lengths", "8",
                        "--new_tokens", "3", "--repeats", "1", "--format", "json"], capsys)
    assert code == 0
    report = json.loads(out[out.index("{"):])
    assert report["target"] == "npu" and report["compare"]["target"] == "cpu"
    row = report["results"][0]
    assert row["tokens_per_s"] > 0 and row["tokens_per_s_vs_cpu"] > 0 and row["prefill_tokens_per_s_vs_cpu"] > 0


def test_export_task_writes_a_folder(quantized, tmp_path, capsys):
    code, out, _ = run(["--task", "export", "--target", "npu", "--model", str(quantized), "--out",
                        str(tmp_path / "onnx")], capsys)
    assert code == 0 and "8 MatMulNBits nodes covering 14 quantized Linears" in out
    assert (tmp_path / "onnx" / "genai_config.json").exists()


def test_strict_ep_without_an_npu(quantized, capsys):
    code, _, err = run(["--task", "decode", "--target", "npu", "--strict_ep", "--model", str(quantized),
                        "--prompt", "x"], capsys)
    assert_user_error(code, err, "VitisAIExecutionProvider is not available", "CPUExecutionProvider")


def test_unavailable_provider(quantized, capsys):
    code, _, err = run(["--task", "decode", "--target", "npu", "--ep", "QNN", "--model", str(quantized),
                        "--prompt", "x"], capsys)
    assert_user_error(code, err, "QNNExecutionProvider", "available: ")


def test_stale_export_folder(quantized, tmp_path, capsys):
    assert run(["--task", "export", "--target", "npu", "--model", str(quantized), "--out", str(tmp_path / "o"),
                "--accuracy_level", "0"], capsys)[0] == 0
    code, _, err = run(["--task", "decode", "--target", "npu", "--model", str(quantized), "--onnx_dir",
                        str(tmp_path / "o"), "--prompt", "x"], capsys)
    assert_user_error(code, err, "stale", "run_awq export")


def test_foreign_export_folder(quantized, tmp_path, capsys):
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "model.onnx").write_bytes(b"")
    code, _, err = run(["--task", "decode", "--target", "npu", "--model", str(quantized), "--onnx_dir",
                        str(tmp_path / "f"), "--prompt", "x"], capsys)
    assert_user_error(code, err, "not an export of this tool")


def test_group_size_matmulnbits_cannot_use(tmp_path, capsys):
    from edgeawq.default_models import DEFAULT_MODELS

    quantize_tiny(DEFAULT_MODELS["default-llama"], tmp_path / "g", awq_mode="none", algorithm="pergrp",
                  group_size=-1)            # down_proj has K = 768: not a power of two
    code, _, err = run(["--task", "export", "--target", "npu", "--model", str(tmp_path / "g"), "--out",
                        str(tmp_path / "o")], capsys)
    assert_user_error(code, err, "power of two", "--group_size")
    assert not (tmp_path / "o").exists()


def test_export_needs_the_npu_target(quantized, tmp_path, capsys):
    code, _, err = run(["--task", "export", "--target", "cpu", "--model", str(quantized), "--out",
                        str(tmp_path / "o")], capsys)
    assert_user_error(code, err, "--target npu")


def test_onnxruntime_missing(quantized, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    code, _, err = run(["--task", "decode", "--target", "npu", "--model", str(quantized), "--prompt", "x"], capsys)
    assert_user_error(code, err, "ONNX Runtime is not installed", "pip install onnxruntime")
