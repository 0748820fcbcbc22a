"""w4 decode against the float path of the same model shape, in one run, interleaved (issue 4's 3x criterion).

Float: a random bf16 checkpoint of the shape (scripts/make_random_checkpoint.py, written once into --work), run by
`run_awq --task benchmark --engine torch --flash_attention` with --dtype bf16 and with --dtype fp32 (whichever is
faster counts). w4: `run_awq --task benchmark --random_weights` (RTN w4 g128, lm_head w4 g128, the cpu target's
default ONNX Runtime engine). Decode tok/s at prompt 64 with 32 new tokens, batch 1, 2 threads; median and
min-max over --rounds; ratio = w4 median / best float median. Each run is its own process.
Prints JSON lines and a markdown table. Usage: python benchmarks/quantized_vs_float.py [--shape llama-3.2-1b]
[--rounds 3] [--work runs/peers] [--save]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "quantized_vs_float.jsonl"


def decode_tok_s(args: list[str], env: dict) -> float:
    cmd = [sys.executable, "-m", "edgeawq.cli", "--task", "benchmark", "--prompt_lengths", "64", "--new_tokens", "32",
           "--repeats", "1", "--format", "json", "--compare_target", "none", *args]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, **env}).stdout
    return json.loads(out[out.index("{"):])["results"][0]["tokens_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="llama-3.2-1b")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "peers")
    ap.add_argument("--save", action="store_true")
    args = ap.parse_args()
    work = args.work.resolve()
    float_ckpt = work / f"{args.shape}-float-bf16"
    if not (float_ckpt / "config.json").exists():
        subprocess.run([sys.executable, str(ROOT / "scripts" / "make_random_checkpoint.py"), "--shape", args.shape,
                        "--out", str(float_ckpt)], check=True)
    env = {"EDGEAWQ_CACHE": str(work / "cache")}
    runs = {"float bf16": ["--model", str(float_ckpt), "--engine", "torch", "--flash_attention", "--dtype", "bf16"],
            "float fp32": ["--model", str(float_ckpt), "--engine", "torch", "--flash_attention", "--dtype", "fp32"],
            "w4 g128": ["--model", args.shape, "--random_weights", "--w_bit", "4", "--group_size", "128", "--lm_head",
                        "--lm_head_group_size", "128", "--dtype", "bf16"]}
    samples = {k: [] for k in runs}
    for r in range(args.rounds):
        names = list(runs)[r % len(runs):] + list(runs)[: r % len(runs)]
        for name in names:
            samples[name].append(decode_tok_s(runs[name], env))
    lines = []
    for name, values in samples.items():
        lines.append({"shape": args.shape, "path": name, "decode_tok_s_median": statistics.median(values),
                      "min": min(values), "max": max(values), "rounds": len(values), "prompt_tokens": 64,
                      "new_tokens": 32})
    best_float = max(statistics.median(samples[k]) for k in ("float bf16", "float fp32"))
    lines.append({"shape": args.shape, "ratio": "w4 / best float", "value": statistics.median(samples["w4 g128"])
                  / best_float})
    for line in lines:
        print(json.dumps(line))
    if args.save:
        RESULTS.write_text("".join(json.dumps(x) + "\n" for x in lines))
    print("\n| shape | path | decode tok/s (median, min-max) |\n|---|---|---|")
    for x in lines[:-1]:
        print(f"| {x['shape']} | {x['path']} | {x['decode_tok_s_median']:.2f} ({x['min']:.2f}-{x['max']:.2f}) |")
    print(f"\nw4 / best float: {lines[-1]['value']:.2f}x")


if __name__ == "__main__":
    main()
