"""Prefill by chunk size: speed and peak memory of one long prompt fed in chunks of N tokens, per engine.

For each engine and chunk size (0 = the whole prompt in one call), a fresh process builds the engine on a random-
weight model shape (w4 and lm_head w4, groups of --group_size, bf16 embedding; the native and ONNX caches are reused
between processes), warms it up on a short prompt, then prefills a random prompt of --prompt_length tokens --repeats
times: prefill tok/s (median) and the peak resident memory during the prefill above the resident memory just before
it (the activations, the attention's scores and masks, the logits, and the pages of a paged KV cache that the prompt
fills; a cache allocated and written by start() is counted apart as kv_mb). JSON lines, one per (engine, chunk);
then, per engine, the prefill speed of each chunk relative to the one-call prefill.

Usage: python benchmarks/prefill_chunk.py [--model llama-3.2-1b] [--engines native onnx] [--prompt_length 2048]
       [--chunks 0 128 256 512 1024] [--repeats 3] [--out F.jsonl]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

from jsonl_io import append_jsonl, run_child


def build_engine(model: str, engine: str, group_size: int):
    import torch

    from edgeawq.kernels.quantizer import QuantSpec
    from edgeawq.runtime.backends import BACKENDS, EngineOptions
    from edgeawq.runtime.random_model import random_quantized_model

    loaded = random_quantized_model(model, QuantSpec(4, group_size).validate(), torch.bfloat16, torch.float32,
                                    lm_head_group_size=group_size)
    if engine == "tt":
        from edgeawq.tt_backend.backend import make_tt_engine

        return make_tt_engine(loaded, "performance"), loaded.config.vocab_size
    options = EngineOptions(engine="torch" if engine == "flash" else engine, flash_attention=engine == "flash")
    return BACKENDS["cpu"].make_engine(loaded, options), loaded.config.vocab_size


def child(args) -> None:
    """One (engine, chunk): prints one JSON line."""
    import time

    import torch

    from edgeawq.evaluation.benchmark import peak_rss_bytes, reset_peak_rss
    from edgeawq.runtime.chunked_prefill import forward_chunked
    from edgeawq.runtime.memory import proc_kb_field, release_free_memory

    engine, vocab = build_engine(args.model, args.engine, args.group_size)
    L = args.prompt_length
    ids = torch.randint(0, vocab, (1, L), generator=torch.Generator().manual_seed(0))
    ones = torch.ones(1, L, dtype=torch.long)
    engine.start(1, 64)
    forward_chunked(engine, ids[:, :32], torch.arange(32)[None], ones[:, :32], chunk=0)        # warm-up
    times, peaks = [], []
    for _ in range(args.repeats):
        before_kv = proc_kb_field("/proc/self/status", "VmRSS")
        engine.start(1, L)
        release_free_memory()
        before = proc_kb_field("/proc/self/status", "VmRSS")
        reset_peak_rss()
        t0 = time.perf_counter()
        forward_chunked(engine, ids, torch.arange(L)[None], ones, chunk=args.chunk)
        times.append(time.perf_counter() - t0)
        peaks.append(peak_rss_bytes() - before)
    print(json.dumps({"model": args.model, "engine": args.engine, "engine_name": engine.name,
                      "prompt_length": L, "chunk": args.chunk, "prefill_tok_s": round(L / statistics.median(times), 2),
                      "prefill_s": [round(t, 3) for t in times],
                      "activation_peak_mb": round(statistics.median(peaks) / 2**20, 1),
                      "kv_mb": round(max(0, before - before_kv) / 2**20, 1)}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama-3.2-1b", help="a shape name of run_awq benchmark --random_weights")
    ap.add_argument("--engines", nargs="+", default=["native", "onnx"], choices=["native", "onnx", "flash", "tt"])
    ap.add_argument("--prompt_length", type=int, default=2048)
    ap.add_argument("--group_size", type=int, default=128, help="of the random w4 weights (smollm2-135m: 64)")
    ap.add_argument("--chunks", nargs="+", type=int, default=[0, 128, 256, 512, 1024])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None, help="also append the JSON lines to this file")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--engine", help=argparse.SUPPRESS)
    ap.add_argument("--chunk", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    rows = []
    for engine in args.engines:
        for chunk in args.chunks:
            cmd = [sys.executable, __file__, "--child", "--model", args.model, "--engine", engine, "--chunk",
                   str(chunk), "--prompt_length", str(args.prompt_length), "--repeats", str(args.repeats),
                   "--group_size", str(args.group_size)]
            row = run_child(cmd)
            rows.append(row)
            print(json.dumps(row), flush=True)
    for engine in args.engines:
        mine = {r["chunk"]: r for r in rows if r["engine"] == engine}
        if 0 in mine:
            print(json.dumps({"engine": engine, "speed_vs_one_call": {
                c: round(r["prefill_tok_s"] / mine[0]["prefill_tok_s"], 3) for c, r in mine.items()},
                "activation_peak_mb": {c: r["activation_peak_mb"] for c, r in mine.items()}}), flush=True)
    append_jsonl(args.out, rows)


if __name__ == "__main__":
    main()
