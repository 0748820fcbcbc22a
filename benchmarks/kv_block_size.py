"""The native engine's KV cache by block size: decode speed at depth, and the memory a batch of mixed lengths holds.

* speed: one native engine on a random-weight shape (w4 g128 and lm_head w4 g128, bf16 embedding) and one cache per
  block size (0 = contiguous) holding --context tokens of random content (benchmarks/decode_at_depth.py); each round
  decodes --new_tokens from that depth once per block size, the order rotating between rounds: decode tok/s per
  block size (medians, and the median of the per-round ratios to the contiguous cache). The caches are swapped on
  the same engine, so every run reads the same weights.
* memory: per block size, a fresh process starts a batch of --batch_lengths prompts (default 8 rows from 64 to 2048
  tokens) with context = the longest + --new_tokens, prefills it (in chunks of 256) and decodes --new_tokens: the
  growth of resident memory from before start() to the end (the KV cache and what the calls leave behind) and the
  blocks held, against the bytes the rows' tokens need.
JSON lines. Run it alone on the machine.

Usage: python benchmarks/kv_block_size.py [--model llama-3.2-1b] [--blocks 0 16 32 64 128] [--context 2048]
       [--new_tokens 32] [--rounds 3] [--skip_memory] [--out F.jsonl]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

from jsonl_io import append_jsonl, run_child


def build(model: str):
    import torch

    from edgeawq.kernels.quantizer import QuantSpec
    from edgeawq.runtime.backends import BACKENDS, EngineOptions
    from edgeawq.runtime.random_model import random_quantized_model

    loaded = random_quantized_model(model, QuantSpec(4, 128).validate(), torch.bfloat16, torch.float32,
                                    lm_head_group_size=128)
    return BACKENDS["cpu"].make_engine(loaded, EngineOptions(engine="native", kv_block_size=0)), loaded.config


def set_mode(engine, block: int) -> None:
    from edgeawq.cpu_backend.kv_cache import ContiguousKV, PagedKV

    args = (engine.decoder, engine.layers, engine.kv_heads, engine.head_dim)
    engine.kv = ContiguousKV(*args) if block == 0 else PagedKV(*args, block, None)


def speed(args) -> list[dict]:
    from decode_at_depth import decode_tok_s, fill

    engine, config = build(args.model)
    caches = {}
    for block in args.blocks:                          # one filled cache per block size, kept while the rounds run
        set_mode(engine, block)
        caches[block] = engine.kv
        engine.start(1, args.context + args.new_tokens)
        fill(engine, args.context)
    samples = {b: [] for b in args.blocks}
    for r in range(args.rounds):
        order = args.blocks[r % len(args.blocks):] + args.blocks[:r % len(args.blocks)]
        for block in order:
            engine.kv = caches[block]
            samples[block].append(decode_tok_s(engine, args.context, args.new_tokens, config.vocab_size))
    rows = []
    for block in args.blocks:
        ratios = [a / b for a, b in zip(samples[block], samples[args.blocks[0]])]
        rows.append({"measure": "decode", "model": args.model, "context": args.context, "kv_block_size": block,
                     "decode_tok_s": round(statistics.median(samples[block]), 2),
                     "samples": [round(x, 2) for x in samples[block]],
                     f"median_round_ratio_vs_{args.blocks[0]}": round(statistics.median(ratios), 3)})
    return rows


def memory_child(args) -> None:
    import torch

    from edgeawq.runtime.generate import generate_ids
    from edgeawq.runtime.memory import proc_kb_field, release_free_memory

    engine, config = build(args.model)
    set_mode(engine, args.block)
    engine.prefill_chunk = 256
    lengths = args.batch_lengths
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, config.vocab_size, (n,), generator=g).tolist() for n in lengths]
    context = max(lengths) + args.new_tokens
    release_free_memory()
    before = proc_kb_field("/proc/self/status", "VmRSS")
    generate_ids(engine, prompts, args.new_tokens, context, 0, set(), stop_at_eos=False)
    release_free_memory()
    after = proc_kb_field("/proc/self/status", "VmRSS")
    per_token = 2 * engine.layers * engine.kv_heads * engine.head_dim * 4
    held = sum(n + args.new_tokens - 1 for n in lengths) * per_token
    print(json.dumps({"measure": "memory", "model": args.model, "kv_block_size": args.block,
                      "batch_lengths": lengths, "new_tokens": args.new_tokens, "context": context,
                      "rss_growth_mb": round((after - before) / 2**20, 1),
                      "kv_tokens_mb": round(held / 2**20, 1),
                      "kv_contiguous_mb": round(len(lengths) * (-(-context // 16) * 16) * per_token / 2**20, 1),
                      "blocks_held": getattr(engine.kv, "peak_blocks", None)}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama-3.2-1b", help="a shape name of run_awq benchmark --random_weights")
    ap.add_argument("--blocks", nargs="+", type=int, default=[0, 16, 32, 64, 128])
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--new_tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch_lengths", nargs="+", type=int, default=[64, 128, 256, 384, 512, 768, 1024, 2048])
    ap.add_argument("--skip_memory", action="store_true")
    ap.add_argument("--skip_speed", action="store_true")
    ap.add_argument("--out", default=None, help="also append the JSON lines to this file")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--block", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        memory_child(args)
        return
    rows = [] if args.skip_speed else speed(args)
    for r in rows:
        print(json.dumps(r), flush=True)
    if not args.skip_memory:
        for block in args.blocks:
            cmd = [sys.executable, __file__, "--child", "--model", args.model, "--block", str(block),
                   "--new_tokens", str(args.new_tokens), "--batch_lengths", *map(str, args.batch_lengths)]
            rows.append(run_child(cmd))
            print(json.dumps(rows[-1]), flush=True)
    append_jsonl(args.out, rows)


if __name__ == "__main__":
    main()
