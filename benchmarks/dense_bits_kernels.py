"""One-token matmul time of the native kernels by weight bits, on a model shape's decoder Linears, paired in one
process: 4-bit (nibble lines) against the dense 3-bit and 2-bit layouts.

For --layers layers of the shape (fused q/k/v, o, fused gate/up, down; group --group_size, random codes, fp16
scales, zero points 0) the script packs one stack per bit width (far larger than the L3 cache, so the weights
stream from memory as in decode), then runs --reps passes of one token through every Linear of each stack, the
order of the bit widths rotating per pass, on torch's thread count. It prints per bit width the median pass time,
the bytes streamed per pass and GB/s, and per pass the speed ratio to 4-bit, then the median of those ratios (JSON
lines). This isolates the kernels from what a decode step adds (attention, norms, lm_head, sampling) and from the
drift between processes that `benchmarks/dense_bits.py` (whole decode, one process per bit width) sees on a shared
machine. Run it alone.

Usage: python benchmarks/dense_bits_kernels.py [--shape llama-2-7b] [--layers 8] [--bits 4 3 2] [--isa auto]
       [--reps 8] [--out FILE.jsonl]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from edgeawq.cpu_backend import native_build
from edgeawq.cpu_backend.native_pack import pack_native

# shape -> (hidden, fused q/k/v outputs, intermediate)
SHAPES = {"llama-2-7b": (4096, 12288, 11008), "llama-3.2-1b": (2048, 3072, 8192)}


def stack(ext, hidden: int, qkv: int, inter: int, layers: int, bits: int, group: int, threads: int) -> list:
    """[(native Linear, one token's activations (1, K), bytes of its weights)] for every Linear of `layers`."""
    out = []
    gen = torch.Generator().manual_seed(bits)
    for _ in range(layers):
        for N, K in ((qkv, hidden), (hidden, hidden), (2 * inter, hidden), (hidden, inter)):
            codes = torch.randint(0, 2 ** bits, (N, K), dtype=torch.uint8, generator=gen)    # (N, K)
            scales = (torch.rand(N, K // group, generator=gen) * 0.01).half()                # (N, G)
            w = pack_native(codes, scales, torch.zeros(N, K // group, dtype=torch.uint8), bits=bits)
            out.append((ext.Linear(w.lines, w.meta, None, N, K, group, threads), torch.randn(1, K, generator=gen),
                        w.lines.numel() + w.meta.numel()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="llama-2-7b", choices=sorted(SHAPES))
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--bits", nargs="+", type=int, default=[4, 3, 2])
    ap.add_argument("--group_size", type=int, default=128)
    ap.add_argument("--isa", default="auto", help="avx512vnni, avx2 or auto (what this CPU has)")
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--out", type=Path, default=None, help="Also append the JSON lines to this file.")
    args = ap.parse_args()
    isa = native_build.best_isa() if args.isa == "auto" else args.isa
    ext, threads = native_build.load(isa), torch.get_num_threads()
    stacks = {b: stack(ext, *SHAPES[args.shape], args.layers, b, args.group_size, threads) for b in args.bits}
    times = {b: [] for b in args.bits}
    for b in args.bits:                                   # warm-up pass
        for lin, x, _ in stacks[b]:
            lin.forward(x)
    for rep in range(args.reps):
        k = rep % len(args.bits)
        for b in args.bits[k:] + args.bits[:k]:
            t0 = time.perf_counter()
            for lin, x, _ in stacks[b]:
                lin.forward(x)
            times[b].append(time.perf_counter() - t0)
    lines = []
    for b in args.bits:
        nbytes = sum(n for _, _, n in stacks[b])
        t = statistics.median(times[b])
        ratios = [t4 / tb for t4, tb in zip(times[4], times[b])] if 4 in times else []
        lines.append({"shape": args.shape, "layers": args.layers, "isa": isa, "threads": threads, "bits": b,
                      "group_size": args.group_size, "median_pass_ms": round(t * 1e3, 2), "bytes_per_pass": nbytes,
                      "gb_s": round(nbytes / t / 1e9, 1), "ratio_to_w4_per_pass": [round(r, 3) for r in ratios],
                      "median_ratio_to_w4": round(statistics.median(ratios), 3) if ratios else None,
                      "reps": args.reps})
    for line in lines:
        print(json.dumps(line), flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.writelines(json.dumps(line) + "\n" for line in lines)


if __name__ == "__main__":
    main()
