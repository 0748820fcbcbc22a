"""Throughput of the block-float weight conversion (tt_backend/blockfloat.py pack_tiles) on a 7B-sized weight set.

Converts every decoder-layer weight of a real shape (configs/shapes/<shape>.json, default llama-2-7b), generated
layer by layer as random bf16 (values do not change the work), transposed to [K, N] as tt-metal stores LLM
weights, into bfloat8_b and bfloat4_b tiles. Prints one JSON line per format: parameters converted, seconds
(median of --repeats passes over one layer, scaled to all layers), parameters/s, and output bytes.
Usage: python benchmarks/tt_format_throughput.py [--shape llama-2-7b] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
import torch

from edgeawq.runtime.module_paths import get_module
from edgeawq.runtime.random_model import meta_skeleton, read_shape
from edgeawq.tt_backend.blockfloat import pack_tiles

def layer_shapes(shape: str) -> tuple[list[tuple[int, int]], int]:
    """-> ((out, in) of every Linear of one decoder layer, number of layers), from the meta-device model."""
    config, family, skeleton = meta_skeleton(read_shape(shape))
    layer = f"{family.layers}.0."
    return [tuple(get_module(skeleton, layer + n).weight.shape) for n in family.linears], config.num_hidden_layers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="llama-2-7b")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    shapes, n_layers = layer_shapes(args.shape)
    gen = torch.Generator().manual_seed(0)
    weights = [(torch.randn(o, i, generator=gen) * 0.02).to(torch.bfloat16) for o, i in shapes]
    per_layer = sum(w.numel() for w in weights)
    for name, bits in (("bfloat8_b", 8), ("bfloat4_b", 4)):
        times, out_bytes = [], 0
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out_bytes = sum(pack_tiles(w.t(), bits).numel() for w in weights)    # weights stored as [K, N]
            times.append(time.perf_counter() - t0)
        layer_s = statistics.median(times)
        print(json.dumps({"shape": args.shape, "format": name, "parameters": per_layer * n_layers,
                          "seconds": round(layer_s * n_layers, 2), "parameters_per_s": round(per_layer / layer_s),
                          "output_bytes": out_bytes * n_layers, "threads": torch.get_num_threads(),
                          "method": f"median of {args.repeats} passes over one layer x {n_layers} layers"}),
              flush=True)


if __name__ == "__main__":
    main()
