"""Decode speed of the native engine by weight bits: 4-bit (nibble lines, 4 bits a weight) against the dense 3-bit
(3 bits a weight) and 2-bit (2 bits a weight) layouts, on a random-weight model shape, side by side.

All Linears and the lm_head are quantized with the same bits and group size, bf16 embedding table; the native
weight cache (keyed by the random model) is packed on first use and reused.

* default: each round runs `run_awq benchmark --random_weights` once per bit width, in a fresh process each (the
  order rotates between rounds): the user's whole path, but on a shared machine the speed drifts between
  processes;
* `--paired`: one process holds one native engine per bit width and each round runs one greedy generation
  (random prompt of --prompt_length tokens, --new_tokens new) per bit width, the order rotating: every ratio
  compares runs seconds apart.

Per bit width the script prints every round's decode tok/s and the median, then the medians of the per-round
ratios to the first of --bits (JSON lines). Run it alone on the machine.

Usage: python benchmarks/dense_bits.py [--model llama-2-7b] [--bits 4 3 2] [--rounds 3] [--paired] [--out F.jsonl]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path


def run_once(args, bits: int) -> dict:
    cmd = [sys.executable, "-m", "edgeawq.cli", "benchmark", "--random_weights", "--model", args.model,
           "--w_bit", str(bits), "--group_size", str(args.group_size), "--lm_head", "--lm_head_group_size",
           str(args.group_size), "--dtype", "bf16", "--prompt_lengths", str(args.prompt_length), "--new_tokens",
           str(args.new_tokens), "--repeats", str(args.repeats), "--engine", "native", "--format", "json",
           "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    report = json.loads(proc.stdout[proc.stdout.index("{"):])
    result = report["results"][0]
    return {"tokens_per_s": result["tokens_per_s"], "weight_bytes_per_token": report["weight_bytes_per_token"],
            "achieved_gb_s": result.get("achieved_gb_s"), "peak_rss_mb": round(result["peak_rss_bytes"] / 2**20)}


def paired_engines(args) -> dict:
    """bits -> (native engine, vocabulary size) of the random model `args.model` quantized with those bits (its
    native cache packed if absent)."""
    import torch

    from edgeawq.kernels.quantizer import QuantSpec
    from edgeawq.runtime.backends import BACKENDS, EngineOptions
    from edgeawq.runtime.random_model import random_model_shell, random_quantized_model
    from edgeawq.cpu_backend.native_state import cached

    engines = {}
    for bits in args.bits:
        shape = (args.model, QuantSpec(bits, args.group_size).validate(), torch.bfloat16, torch.float32)
        loaded = random_model_shell(*shape, lm_head_group_size=args.group_size)
        if not cached(loaded):
            loaded = random_quantized_model(*shape, lm_head_group_size=args.group_size)
        engines[bits] = (BACKENDS["cpu"].make_engine(loaded, EngineOptions(engine="native")),
                         loaded.config.vocab_size)
    return engines


def run_paired(args, engines: dict, bits: int) -> dict:
    import torch

    from edgeawq.evaluation.benchmark import generate_timed

    engine, vocab = engines[bits]
    prompt = torch.randint(0, vocab, (1, args.prompt_length), generator=torch.Generator().manual_seed(0))  # (1, L)
    _, decode_s = generate_timed(engine, prompt, args.new_tokens)
    return {"tokens_per_s": (args.new_tokens - 1) / decode_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama-2-7b", help="a shape name of run_awq benchmark --random_weights")
    ap.add_argument("--bits", nargs="+", type=int, default=[4, 3, 2])
    ap.add_argument("--group_size", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompt_length", type=int, default=64)
    ap.add_argument("--new_tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--paired", action="store_true", help="all bit widths in one process, runs interleaved")
    ap.add_argument("--out", type=Path, default=None, help="Also append the JSON lines to this file.")
    args = ap.parse_args()
    lines, per_round = [], []
    engines = paired_engines(args) if args.paired else None
    for rnd in range(args.rounds):
        order = args.bits[rnd % len(args.bits):] + args.bits[:rnd % len(args.bits)]
        speeds = {}
        for bits in order:
            r = run_paired(args, engines, bits) if args.paired else run_once(args, bits)
            speeds[bits] = r["tokens_per_s"]
            line = {"round": rnd, "paired": args.paired, "model": args.model, "bits": bits,
                    "group_size": args.group_size, **r,
                    "prompt_length": args.prompt_length, "new_tokens": args.new_tokens}
            print(json.dumps(line), flush=True)
            lines.append(line)
        per_round.append(speeds)
    base = args.bits[0]
    for bits in args.bits:
        summary = {"summary": True, "paired": args.paired, "model": args.model, "bits": bits,
                   "group_size": args.group_size,
                   "median_tokens_per_s": round(statistics.median(s[bits] for s in per_round), 2),
                   f"median_ratio_to_w{base}": round(statistics.median(s[bits] / s[base] for s in per_round), 3),
                   "rounds": args.rounds}
        print(json.dumps(summary), flush=True)
        lines.append(summary)
    if args.out:
        with open(args.out, "a") as f:
            f.writelines(json.dumps(line) + "\n" for line in lines)


if __name__ == "__main__":
    main()
