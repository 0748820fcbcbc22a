"""Could a GEMV kernel of our own beat ONNX Runtime's MatMulNBits for decode on this machine? (Issue 4 experiment.)

Builds benchmarks/gemv_vnni.cpp with torch.utils.cpp_extension (needs g++, ninja and an AVX-512 VNNI CPU:
-march=native), checks it against the dequantized matmul (relative error of the int8-activation product), then
times it and MatMulNBits (benchmarks/memory_bandwidth.py) on the same shape, interleaved for --rounds rounds:
M=1, K=4096, N=11008 (a Llama-2-7B MLP matrix), int4 g128 with zero points, 8 weight copies per run so nothing
stays in cache. Prints JSON lines with ms per GEMV and GB/s (bytes each kernel reads: codes plus its scale and
zero-point bytes: 8 per group and row for the prototype's fp32 scale and scale x zero, 4.5 for MatMulNBits').
Usage: python benchmarks/gemv_vnni.py [--rounds 3] [--save]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from memory_bandwidth import matmulnbits_m1  # noqa: E402

RESULTS = HERE / "results" / "gemv_vnni.jsonl"
K, N, COPIES = 4096, 11008, 8


def build():
    from torch.utils.cpp_extension import load

    return load("edgeawq_gemv_vnni", [str(HERE / "gemv_vnni.cpp")], extra_cflags=["-O3", "-march=native", "-fopenmp"],
                extra_ldflags=["-fopenmp"], verbose=False)


def random_matrix(gen: torch.Generator):
    """-> (codes (N, K) uint8, scales (N, G), zeros (N, G), interleaved bytes, scales and scale x zero by 16 rows)."""
    G, R = K // 128, N // 16
    codes = torch.randint(0, 16, (N, K), generator=gen, dtype=torch.uint8)
    s = torch.rand(N, G, generator=gen) * 0.01 + 0.001
    z = torch.randint(0, 16, (N, G), generator=gen).float()
    c = codes.view(R, 16, G, 16, 2, 4)                 # k = g*128 + p*8 + half*4 + j
    lines = (c[..., 0, :] | (c[..., 1, :] << 4)).permute(0, 2, 3, 1, 4).contiguous()   # (R, G, p, 16 rows, 4)
    S = s.view(R, 16, G).permute(0, 2, 1).contiguous()
    Z = (z * s).view(R, 16, G).permute(0, 2, 1).contiguous()
    return codes, s, z, lines, S, Z


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--save", action="store_true")
    args = ap.parse_args()
    ext = build()
    gen = torch.Generator().manual_seed(0)
    mats = [random_matrix(gen) for _ in range(COPIES)]
    x = torch.randn(K)
    codes, s, z, lines, S, Z = mats[0]
    ref = ((codes.float() - z.repeat_interleave(128, 1)) * s.repeat_interleave(128, 1)) @ x
    rel = ((ext.gemv(x, lines, S, Z, N) - ref).norm() / ref.norm()).item()
    nbytes = COPIES * (N * K // 2 + N * (K // 128) * 8)
    rows = []
    for rnd in range(args.rounds):
        run = lambda: [ext.gemv(x, m[3], m[4], m[5], N) for m in mats]
        run()
        ts = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            run()
            ts.append(time.perf_counter() - t)
        rows.append({"kernel": "prototype_vnni", "round": rnd, "rel_err_vs_fp32": rel,
                     "ms_per_gemv_median": statistics.median(ts) / COPIES * 1e3,
                     "gb_per_s_median": nbytes / statistics.median(ts) / 1e9})
        ort = matmulnbits_m1(args.repeats)
        rows.append({"kernel": "ort_matmulnbits", "round": rnd, "ms_per_gemv_median": ort["ms_per_gemv_median"],
                     "gb_per_s_median": ort["gb_per_s_median"]})
        for r in rows[-2:]:
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}), flush=True)
    proto = statistics.median(r["ms_per_gemv_median"] for r in rows if r["kernel"] == "prototype_vnni")
    ort = statistics.median(r["ms_per_gemv_median"] for r in rows if r["kernel"] == "ort_matmulnbits")
    summary = {"summary": True, "prototype_ms": round(proto, 4), "ort_ms": round(ort, 4),
               "ort_over_prototype": round(ort / proto, 3), "threads": torch.get_num_threads()}
    print(json.dumps(summary))
    if args.save:
        with RESULTS.open("a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows + [summary])


if __name__ == "__main__":
    main()
