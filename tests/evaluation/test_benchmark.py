"""Benchmark tasks: the report's schema, positive numbers, skipping and refusing long prompts, the profile CSV.
No timing thresholds: the machine is shared."""
from __future__ import annotations

import csv
import json

import pytest
import torch

from edgeawq.errors import UserError
from edgeawq.evaluation.benchmark import weight_bytes_per_token
from edgeawq.runtime.model_loader import load_model
from edgeawq.tasks.benchmark import benchmark_task

FIELDS = {"prompt_tokens", "new_tokens", "batch", "repeats", "total_ms", "total_ms_min", "total_ms_max", "prefill_ms",
          "time_per_token_ms", "tokens_per_s", "prefill_tokens_per_s", "achieved_gb_s", "peak_rss_bytes",
          "weights_bytes", "kv_bytes"}


@pytest.mark.parametrize("flash", [False, True])
def test_benchmark_json_schema_and_positive_numbers(checkpoints, tmp_path, capsys, flash):
    report = benchmark_task("benchmark", str(checkpoints["qwen2"]), "cpu", "fp32", "bf16", flash, "4,16", 4, 2,
                            "json", str(tmp_path / "p.csv"))
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(report))
    assert {"model", "target", "engine", "dtype", "threads", "weight_bytes_per_token", "results"} <= set(printed)
    assert [r["prompt_tokens"] for r in printed["results"]] == [4, 16]
    for r in printed["results"]:
        assert set(r) == FIELDS
        assert all(r[k] > 0 for k in FIELDS)
        assert r["total_ms_min"] <= r["total_ms"] <= r["total_ms_max"]
    with open(tmp_path / "p.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["prompt_tokens"] for r in rows} == {"4", "16"}
    lm_head = next(r for r in rows if r["module"] == "lm_head" and r["prompt_tokens"] == "4")
    assert int(lm_head["prefill_calls"]) == 1 and int(lm_head["decode_calls"]) == 3


def test_a_batch_counts_every_row(checkpoints, capsys):
    """--batch 3: three different prompts per call; tokens/s and prefill tok/s count all rows."""
    report = benchmark_task("benchmark", str(checkpoints["qwen2"]), "cpu", "fp32", "bf16", False, "8", 3, 1, "json",
                            None, batch=3)
    row = report["results"][0]
    assert report["batch"] == row["batch"] == 3
    assert row["tokens_per_s"] == pytest.approx(3 * 1e3 / row["time_per_token_ms"])
    assert row["prefill_tokens_per_s"] == pytest.approx(3 * 8 * 1e3 / row["prefill_ms"])
    assert row["achieved_gb_s"] == pytest.approx(report["weight_bytes_per_token"] / row["time_per_token_ms"] / 1e6)
    with pytest.raises(UserError, match="--batch 0"):
        benchmark_task("benchmark", str(checkpoints["qwen2"]), "cpu", "fp32", "bf16", False, "8", 3, 1, "json", None,
                       batch=0)


def test_jsonl_and_skipped_default_lengths(checkpoints, capsys):
    benchmark_task("benchmark", str(checkpoints["llama3"]), "cpu", "fp32", "bf16", True, None, 64, 1, "jsonl", None)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prompt_tokens"] for r in lines] == [4, 8, 16, 32, 64, 128, 256]
    assert "skipped" in lines[-1] and "tokens_per_s" in lines[-2]  # 256 + 64 > 256 >= 128 + 64


def test_user_lengths_beyond_context_are_refused(checkpoints):
    with pytest.raises(UserError, match="exceed the model's context of 256"):
        benchmark_task("benchmark", str(checkpoints["llama3"]), "cpu", "fp32", "bf16", True, "300", 4, 1, "md", None)
    with pytest.raises(UserError, match="--prompt_lengths"):
        benchmark_task("benchmark", str(checkpoints["llama3"]), "cpu", "fp32", "bf16", True, "4,x", 4, 1, "md", None)


def test_weight_bytes_count_tied_head_fully_and_quantized_buffers(checkpoints, tmp_path):
    from ..conftest import quantize_tiny

    loaded = load_model(checkpoints["llama3"])
    params = sum(p.numel() * 4 for p in loaded.model.parameters())  # tied: embedding counted once
    assert weight_bytes_per_token(loaded.model, loaded.model.model.embed_tokens) == params
    quantize_tiny(checkpoints["qwen2"], tmp_path / "q", awq_mode="none")
    q = load_model(tmp_path / "q")
    got = weight_bytes_per_token(q.model, q.model.model.embed_tokens)
    qlinears = [m for m in q.model.modules() if type(m).__name__ == "QLinearPerGrp"]
    packed = sum(m.packed.numel() + m.scales.numel() * 2 + m.zeros.numel() for m in qlinears)
    f = load_model(checkpoints["qwen2"]).model
    floats = weight_bytes_per_token(f, f.model.embed_tokens) - sum(
        m.weight.numel() * 4 for m in f.modules() if type(m).__name__ == "Linear" and m is not f.lm_head)
    assert got == floats + packed  # q/k/v biases are counted in `floats` (parameters of the float model)


def test_random_weights_build_quantized_model_of_a_shape(tmp_path, capsys):
    from edgeawq.kernels.qlinear import QLinearPerGrp
    from edgeawq.kernels.quantizer import QuantSpec
    from edgeawq.runtime.random_model import random_quantized_model, shape_names

    from ..conftest import make_config

    assert {"llama-2-7b", "llama-3.1-8b", "llama-3.2-1b", "qwen2.5-7b"} <= set(shape_names())
    make_config("qwen2").to_json_file(tmp_path / "config.json")
    loaded = random_quantized_model(str(tmp_path / "config.json"), QuantSpec(4, 32), torch.float32, torch.bfloat16)
    linears = [m for m in loaded.model.modules() if isinstance(m, QLinearPerGrp)]
    assert len(linears) == 2 * 7 and linears[0].bias is not None
    report = benchmark_task("benchmark", str(tmp_path), "cpu", "fp32", "bf16", True, "4", 3, 1, "json", None,
                            QuantSpec(4, 32))
    assert report["quantization"] == {"bits": 4, "group_size": 32, "lm_head_group_size": None}
    assert report["results"][0]["tokens_per_s"] > 0
    with_head = random_quantized_model(str(tmp_path / "config.json"), QuantSpec(4, 32), torch.float32, torch.bfloat16,
                                       lm_head_group_size=32)
    assert isinstance(with_head.model.lm_head, QLinearPerGrp) and with_head.quant.lm_head_group_size == 32
    assert with_head.fingerprint != loaded.fingerprint
    with pytest.raises(UserError, match="shape name or a config.json"):
        random_quantized_model("no-such-shape", QuantSpec(4, 32), torch.float32, torch.bfloat16)


def test_profile_of_the_native_engine_times_every_layer_step(checkpoints, tmp_path, capsys):
    from edgeawq.cpu_backend import native_build
    from edgeawq.runtime.backends import EngineOptions

    from ..conftest import quantize_tiny

    if native_build.unavailable_reason():          # the machine cannot build them; a build error fails below
        pytest.skip(f"native kernels cannot build here: {native_build.unavailable_reason()}")
    quantize_tiny(checkpoints["llama3"], tmp_path / "q", awq_mode="none")
    report = benchmark_task("benchmark", str(tmp_path / "q"), "cpu", "fp32", "bf16", False, "8,16", 4, 1, "json",
                            str(tmp_path / "p.csv"))
    assert report["engine"].startswith("native/")
    with open(tmp_path / "p.csv") as f:
        rows = list(csv.DictReader(f))
    layers = load_model(tmp_path / "q").model.config.num_hidden_layers
    steps = native_build.load().profile_phases()
    assert len(steps) == 9 and "attention" in steps
    expected = {f"model.layers.{i}.{s}" for i in range(layers) for s in steps} | {"model.embed_tokens", "lm_head"}
    for length in ("8", "16"):
        of_length = [r for r in rows if r["prompt_tokens"] == length]
        assert {r["module"] for r in of_length} == expected and len(of_length) == len(expected)
        for r in of_length:
            assert (int(r["prefill_calls"]), int(r["decode_calls"])) == (1, 3)
            assert float(r["prefill_ms_total"]) >= 0 and float(r["decode_ms_total"]) >= 0
        assert sum(float(r["decode_ms_total"]) for r in of_length if r["module"].endswith("_proj")) > 0
    with pytest.raises(UserError, match="--engine native"):
        benchmark_task("benchmark", str(tmp_path / "q"), "cpu", "fp32", "bf16", False, "8", 4, 1, "json",
                       str(tmp_path / "o.csv"), engine_options=EngineOptions(engine="onnx"))


def test_rows_split_peak_rss_into_the_engines_weights_and_kv_cache(checkpoints, capsys):
    """The reference engine with its paged cache (64-token blocks by default): kv_bytes = its pool, the blocks of
    prompt + new slots and the scratch block, keys and values (fp32); weights_bytes = every parameter and buffer;
    the table shows `peak (weights + KV)` MB."""
    report = benchmark_task("benchmark", str(checkpoints["llama3"]), "cpu", "fp32", "bf16", True, "16", 4, 1, "md",
                            None)
    assert report["engine"] == "static-cache"
    loaded = load_model(str(checkpoints["llama3"]), "fp32", "bf16")
    c = loaded.config
    per_slot = 2 * c.num_hidden_layers * c.num_key_value_heads * (c.hidden_size // c.num_attention_heads) * 4
    row = report["results"][0]
    assert row["kv_bytes"] == (1 + 1) * 64 * per_slot
    assert row["weights_bytes"] >= sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    mb = 2 ** 20
    cell = f"| {row['peak_rss_bytes'] / mb:.0f} ({row['weights_bytes'] / mb:.0f} + {row['kv_bytes'] / mb:.0f}) |"
    assert cell in capsys.readouterr().out


def test_the_long_context_llama_2_shape_runs_to_64k():
    """yarn-llama-2-7b-64k: the Llama-2-7B layout with yarn x16 over its 4096 trained positions (as
    NousResearch/Yarn-Llama-2-7b-64k): a 65536-token context, where plain llama-2-7b stops at 4096."""
    from edgeawq.kernels.quantizer import QuantSpec
    from edgeawq.runtime.random_model import random_model_shell, read_shape

    long, short = read_shape("yarn-llama-2-7b-64k"), read_shape("llama-2-7b")
    assert {k: v for k, v in long.items() if k not in ("rope_scaling", "max_position_embeddings")} == \
        {k: v for k, v in short.items() if k != "max_position_embeddings"}
    args = (QuantSpec(4, 128), torch.bfloat16, torch.float32)
    assert random_model_shell("yarn-llama-2-7b-64k", *args).max_context == 65536
    assert random_model_shell("llama-2-7b", *args).max_context == 4096
