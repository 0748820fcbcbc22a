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


FAKE_SERVER = '''#!{python}
"""A stand-in llama-server: /health, and /completion replying with timings as llama-server's (a one-slot cache that
keeps the last request's prompt plus its generated tokens, so a prompt extending it prefills only the rest)."""
import json, struct, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

args = sys.argv[1:]
port = int(args[args.index("--port") + 1])
open({log!r}, "a").write(json.dumps(args) + "\\n")
held = []

class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def reply(self, data):
        body = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.reply({{"status": "ok"}})

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["content-length"])))
        open({log!r}, "a").write(json.dumps(req) + "\\n")
        global held
        if self.path == "/slots/0?action=restore":            # the token list of a state file becomes the cache
            data = open(args[args.index("--slot-save-path") + 1] + "/" + req["filename"], "rb").read()
            magic, version, n = struct.unpack_from("<III", data)
            held = list(struct.unpack_from(f"<{{n}}i", data, 12)) if (magic, version) == (0x67677371, 3) else []
            return self.reply({{"n_restored": len(held), "timings": {{"restore_ms": 5.0}}}})
        ids, n = req["prompt"], req["n_predict"]
        same = 0
        while same < min(len(ids), len(held)) and ids[same] == held[same]:
            same += 1
        same = min(same, len(ids) - 1)                         # a prompt all cached: its last token is evaluated again
        held = ids + [7] * n
        self.reply({{"timings": {{"prompt_n": len(ids) - same, "prompt_ms": 1.0,
                                 "prompt_per_second": 1000.0 * (len(ids) - same), "predicted_n": n,
                                 "predicted_ms": 20.0 * (n - 1)}}}})

HTTPServer(("127.0.0.1", port), Handler).serve_forever()
'''


def fake_llama_server(tmp_path: Path, monkeypatch) -> Path:
    """Put the stand-in llama-server (and a 1000-byte GGUF of llama-3.2-1b) in tmp_path -> the file it logs to: its
    arguments, then each request's JSON, one line each."""
    log = tmp_path / "log"
    fake = tmp_path / "llama-server"
    fake.write_text(FAKE_SERVER.format(python=sys.executable, log=str(log)))
    fake.chmod(0o755)
    monkeypatch.setenv("LLAMA_SERVER", str(fake))
    (tmp_path / "llama-3.2-1b-q4_0.gguf").write_bytes(b"x" * 1000)
    return log


def test_llama_server_at_a_depth(tmp_path, monkeypatch):
    """The server engine: request 1 holds the depth and decodes; request 2 extends the same ids by the prompt, so only
    the prompt is prefilled (the reply's prompt_n); decode ms/token over the steps after the first token."""
    log = fake_llama_server(tmp_path, monkeypatch)
    server = long_context.LlamaServerAtDepth("llama-3.2-1b", tmp_path, "-fa off")
    assert server.available() is None and server.name == "llama-server (-fa off)"
    got = server.measure(300, 64, 8)
    args, first, second = (json.loads(line) for line in log.read_text().splitlines())
    assert " ".join(args).endswith("-np 1 -c 372 --cache-ram 0 --no-webui -fa off")
    assert len(first["prompt"]) == 300 and first["n_predict"] == 8 and first["ignore_eos"] and first["cache_prompt"]
    assert second["prompt"][:300] == first["prompt"] and len(second["prompt"]) == 364 and second["n_predict"] == 1
    assert got["prefill_tok_s"] == 64000.0 and got["depth_prefill_tok_s"] == 300000.0
    assert got["decode_ms_per_token"] == 20.0 and got["weights_bytes"] == 1000
    assert got["kv_bytes"] == 2 * 16 * 8 * 64 * 2 * 372 and got["peak_rss_bytes"] > 0


def test_llama_server_with_a_restored_depth(tmp_path, monkeypatch):
    """depth="restore": the server gets --slot-save-path, slot 0 restores a state file holding the depth's token ids
    before request 1, which then evaluates only the last of them again; the restore time replaces the depth
    prefill rate. A server that did not keep the restored tokens fails the measurement."""
    log = fake_llama_server(tmp_path, monkeypatch)
    server = long_context.LlamaServerAtDepth("llama-3.2-1b", tmp_path, "-fa off", depth="restore")
    assert server.name == "llama-server (-fa off), restored depth"
    got = server.measure(300, 64, 8)
    args, restore, first, second = (json.loads(line) for line in log.read_text().splitlines())
    assert "--slot-save-path" in args and restore == {"filename": "depth.bin"}
    assert len(first["prompt"]) == 300 and second["prompt"][:300] == first["prompt"]
    assert got["depth_restore_ms"] == 5.0 and "depth_prefill_tok_s" not in got
    assert got["prefill_tok_s"] == 64000.0 and got["decode_ms_per_token"] == 20.0
    with pytest.raises(ValueError, match="prefill' or 'restore"):
        long_context.LlamaServerAtDepth("llama-3.2-1b", tmp_path, depth="load")


def test_flash_attention_from_llama_options():
    assert long_context.flash_attention([]) and long_context.flash_attention(["-fa", "auto", "-ub", "128"])
    assert not long_context.flash_attention(["-fa", "off", "-ub", "128"])
    assert not long_context.flash_attention(["--flash-attn", "off"]) and long_context.flash_attention(["-fa", "on"])
