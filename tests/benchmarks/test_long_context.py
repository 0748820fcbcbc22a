"""benchmarks/long_context.py: our measurement at a depth (a small shape) and the reading of llama-bench's JSON lines
(a stand-in executable printing them)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

from edgeawq.cpu_backend import native_build

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import long_context  # noqa: E402

SHAPE = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=4096, hidden_size=128,
             intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
             max_position_embeddings=1024, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
             bos_token_id=0, eos_token_id=1)


def test_ours_at_a_depth(tmp_path, monkeypatch):
    if native_build.unavailable_reason() is not None:
        pytest.skip(f"native kernels cannot build here: {native_build.unavailable_reason()}")
    monkeypatch.setenv("EDGEAWQ_CACHE", str(tmp_path / "cache"))
    (tmp_path / "config.json").write_text(json.dumps(SHAPE))
    args = argparse.Namespace(shape=str(tmp_path / "config.json"), kv_dtype="fp16", depth=300, prompt=64,
                              new_tokens=4)
    row = long_context.ours_child(args)
    assert row["prefill_tok_s"] > 0 and row["decode_ms_per_token"] > 0
    per_block = 2 * 2 * 2 * 32 * 64 * 2               # keys + values, layers, kv heads, head_dim, 64 slots, fp16
    assert row["kv_bytes"] == -(-(300 + 64) // 64) * per_block        # the blocks of depth + prompt, no more
    assert row["weights_bytes"] > 4096 * 128 * 2                      # at least the bf16 embedding table


def test_llama_bench_rows_are_read(tmp_path, monkeypatch):
    fake = tmp_path / "llama-bench"
    rows = [{"n_prompt": 512, "n_gen": 0, "n_depth": 2048, "avg_ts": 100.0, "flash_attn": True, "type_k": "f16"},
            {"n_prompt": 0, "n_gen": 32, "n_depth": 2048, "avg_ts": 20.0, "flash_attn": True, "type_k": "f16"}]
    fake.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'args'}\n" + "".join(f"echo '{json.dumps(r)}'\n" for r in rows))
    fake.chmod(0o755)
    monkeypatch.setenv("LLAMA_BENCH", str(fake))
    gguf = tmp_path / "llama-3.2-1b-q4_0.gguf"
    gguf.write_bytes(b"x" * 1000)
    bench = long_context.LlamaBench("llama-3.2-1b", tmp_path)
    assert bench.available() is None
    got = bench.measure(2048, 512, 32)
    assert got["prefill_tok_s"] == 100.0 and got["decode_ms_per_token"] == 50.0 and got["weights_bytes"] == 1000
    assert got["kv_bytes"] == 2 * 16 * 8 * 64 * 2 * (2048 + 512)      # Llama-3.2-1B: 16 layers, 8 KV heads, f16
    assert (tmp_path / "args").read_text().endswith(" -o jsonl -p 512 -n 32 -d 2048\n") and bench.name == "llama.cpp"
    off = long_context.LlamaBench("llama-3.2-1b", tmp_path, "-fa off  -ub 128")
    off.measure(2048, 512, 32)
    assert " -o jsonl -fa off -ub 128 -p 512 " in (tmp_path / "args").read_text()
    assert off.name == "llama.cpp (-fa off -ub 128)"


def test_a_plan_beyond_a_shapes_context_is_refused_before_any_test_runs():
    assert long_context.parse_plan(["llama-3.2-1b:512,32768", "yarn-llama-2-7b-64k:512,32768"], 544) == [
        ("llama-3.2-1b", [512, 32768]), ("yarn-llama-2-7b-64k", [512, 32768])]
    with pytest.raises(SystemExit, match="exceeds the shape's context of 4096 tokens.*yarn-llama-2-7b-64k"):
        long_context.parse_plan(["llama-3.2-1b:512", "llama-2-7b:512,8192"], 544)
    with pytest.raises(SystemExit, match="shape:depth"):
        long_context.parse_plan(["llama-2-7b:5k"], 544)
