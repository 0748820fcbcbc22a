"""benchmarks/serve_load.py end to end on the default model's shape, briefly: our server under 1 and 3 closed-loop
clients (and llama-server beside it when it is built), zero errors, latencies and RSS reported; the placeholder
tokenizer covers the whole vocabulary."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgeawq.cpu_backend import native_build

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import serve_load  # noqa: E402


def test_placeholder_tokenizer_covers_every_id(tmp_path):
    from transformers import AutoTokenizer

    serve_load.placeholder_tokenizer(tmp_path, 300)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert len(tok) == 300 and tok.decode([5, 299]) == "t5 t299" and tok.eos_token_id == 2


def test_percentiles():
    got = serve_load.percentiles([float(x) for x in range(1, 101)])
    assert got == {"p50": 51.0, "p95": 96.0, "p99": 100.0}
    assert serve_load.percentiles([])["p99"] is None


@pytest.mark.slow
@pytest.mark.skipif(native_build.unavailable_reason() is not None, reason="native engine unavailable")
def test_a_short_load_run(tmp_path):
    servers = ["ours", "llama.cpp"] if serve_load.llama_server_exe() else ["ours"]
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serve_load.py"), "--models", "default",
                           "--clients", "1", "3", "--seconds", "4", "--slots", "4", "--new_tokens", "16",
                           "--prompt_tokens", "40", "--work", str(tmp_path), "--servers", *servers],
                          capture_output=True, text=True, env={**os.environ, "EDGEAWQ_CACHE": str(tmp_path / "c")},
                          timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    runs = [r for r in rows if "server" in r]
    assert {(r["server"], r["clients"]) for r in runs} == {(s, c) for s in servers for c in (1, 3)}
    for r in runs:
        assert r["errors"] == 0 and r["output_tok_s"] > 0 and r["requests"] > 0, r
        assert r["ttft_ms"]["p50"] > 0 and r["itl_ms"]["p99"] >= r["itl_ms"]["p50"] > 0 and r["peak_rss_mb"] > 0
    if len(servers) == 2:
        assert sum("ratio" in r for r in rows) == 2
    assert "| default | 3 | ours |" in proc.stdout
