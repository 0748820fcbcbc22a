"""`run_awq --target tt` end to end (decode, perplexity, benchmark, accuracy), its errors, and the acceptance check
that the accuracy config keeps top-1 agreement above the performance config on every default model."""
from __future__ import annotations

import json

import pytest

from edgeawq.default_models import DEFAULT_MODELS
from edgeawq.runtime.backends import EngineOptions
from edgeawq.tasks.accuracy import accuracy_task

from ..conftest import quantize_tiny
from ..test_cli import assert_user_error, run


def test_decode_on_a_quantized_checkpoint(checkpoints, tmp_path, capsys):
    q = tmp_path / "q"
    quantize_tiny(checkpoints["qwen2"], q, awq_mode="none", algorithm="pergrp")
    capsys.readouterr()
    code, out, err = run(["--task", "decode", "--target", "tt", "--model", str(q), "--prompt", "The hacker",
                          "--max_new_tokens", "4", "--ignore_eos"], capsys)
    assert code == 0 and out.startswith("The hacker")
    assert "[tt] converting weights" in err and "precision performance: ff1_3 bfp4" in err
    assert "engine tt-emulation (performance)" in err


def test_perplexity_and_benchmark(checkpoints, capsys):
    model = str(checkpoints["mistral"])
    code, out, _ = run(["--task", "perplexity", "--target", "tt", "--tt_precision", "accuracy", "--model", model,
                        "--dataset", "corpus-valid", "--seqlen", "64", "--nsamples", "2", "--format", "json"], capsys)
    assert code == 0
    r = json.loads(out[out.index("{"):])
    assert r["protocol"]["target"] == "tt" and r["perplexity"] > 1
    code, out, _ = run(["--task", "benchmark", "--target", "tt", "--model", model, "--prompt_lengths", "8",
                        "--new_tokens", "3", "--repeats", "1", "--format", "json"], capsys)
    assert code == 0
    report = json.loads(out[out.index("{"):])
    assert report["engine"] == "tt-emulation (performance)" and report["compare"]["target"] == "cpu"
    assert report["weight_bytes_per_token"] > 0 and report["results"][0]["tokens_per_s"] > 0


def test_accuracy_json(checkpoints, capsys):
    code, out, _ = run(["--task", "accuracy", "--target", "tt", "--model", str(checkpoints["llama3"]),
                        "--dataset", "corpus-valid", "--seqlen", "32", "--nsamples", "2", "--pcc_tokens", "5",
                        "--format", "json"], capsys)
    assert code == 0
    r = json.loads(out[out.index("{"):])
    assert r["protocol"]["positions"] == 2 * 31 and r["protocol"]["prefill_tokens"] == 16
    assert 0 <= r["top1"] <= r["top5"] <= 1 and 0 < r["min_pcc"] <= r["mean_pcc"] <= 1
    assert r["precision"]["name"] == "performance" and len(r["precision"]["layers"]) == 2
    assert [t["position"] for t in r["per_token"]] == [16, 17, 18, 19, 20]


def test_accuracy_text_table(checkpoints, capsys):
    code, out, _ = run(["--task", "accuracy", "--target", "cpu", "--engine", "torch", "--dtype", "bf16", "--model",
                        str(checkpoints["llama2"]), "--dataset", "corpus-valid", "--seqlen", "32", "--nsamples", "1",
                        "--pcc_tokens", "3"], capsys)
    assert code == 0
    assert "| position | input token | reference top-1 | target top-1 | match | PCC |" in out
    assert out.count("\n| 1") == 3


@pytest.mark.parametrize("args, needles", [
    (["--tt_precision", "fast"], ("neither a named config", "performance or accuracy")),
    (["--flash_attention"], ("--flash_attention", "Drop --flash_attention")),
])
def test_errors(checkpoints, capsys, args, needles):
    code, _, err = run(["--task", "decode", "--target", "tt", "--model", str(checkpoints["llama3"]), "--prompt", "x",
                        "--max_new_tokens", "2", *args], capsys)
    assert_user_error(code, err, *needles)


@pytest.mark.slow
@pytest.mark.parametrize("model", list(DEFAULT_MODELS))
def test_accuracy_mode_beats_performance_mode_on_default_models(model, capsys):
    top1 = {}
    for precision in ("performance", "accuracy"):
        r = accuracy_task(model, "tt", "fp32", "bf16", "corpus-test", 256, 8, None, "json",
                          EngineOptions(tt_precision=precision), 0)
        top1[precision] = r["top1"]
    assert top1["accuracy"] > top1["performance"], top1


def test_too_little_memory_is_refused_before_converting(checkpoints, capsys, monkeypatch):
    from edgeawq.tt_backend import backend

    monkeypatch.setattr(backend, "available_bytes", lambda: 1000)
    code, _, err = run(["--task", "decode", "--target", "tt", "--model", str(checkpoints["llama3"]), "--prompt", "x",
                        "--max_new_tokens", "2"], capsys)
    assert_user_error(code, err, "needs about", "GB available", "Use a smaller model")
    assert "[tt] converting" not in err


def test_a_w8a8_checkpoint_is_refused_with_the_targets_that_run_it(checkpoints, tmp_path, capsys):
    q = tmp_path / "sq"
    quantize_tiny(checkpoints["llama3"], q, w_bit=None, group_size=None, algorithm="smoothquant", awq_mode="run")
    capsys.readouterr()
    code, _, err = run(["decode", "--target", "tt", "--model", str(q), "--prompt", "The hacker"], capsys)
    assert_user_error(code, err, "W8A8 checkpoint (int8 activations, per_token)", "--target cpu or --target npu")


def test_fp16_is_refused_with_the_dtypes_and_targets_that_run_it(checkpoints, capsys):
    code, _, err = run(["decode", "--target", "tt", "--model", str(checkpoints["llama3"]), "--dtype", "fp16",
                        "--prompt", "The hacker"], capsys)
    assert_user_error(code, err, "--target tt cannot run --dtype fp16", "ttnn has no fp16 data type",
                      "--dtype bf16", "--target cpu --engine torch")
