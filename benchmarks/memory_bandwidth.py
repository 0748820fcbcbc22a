"""The decode ceiling of this machine: streaming read bandwidth next to ONNX Runtime's MatMulNBits GEMV.

Prints JSON lines: (1) `read`: a 1 GiB float32 reduction (torch.sum and torch.amax, 2 threads): the bandwidth a
kernel streaming weights can reach; (2) `matmulnbits_m1`: ONNX Runtime's MatMulNBits at M=1, K=4096, N=11008
(one Llama-2-7B MLP matrix), int4, block 128, zero points, accuracy_level 4, eight different weight copies per run
so nothing stays in cache; bytes read = codes + fp32 scales + zero points. Medians and best of --repeats runs.
A decode step at w4 g128 cannot be faster than (weight bytes per token) / (read bandwidth).
Usage: python benchmarks/memory_bandwidth.py [--repeats 20] [--save]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results" / "memory_bandwidth.jsonl"


def timed(fn, repeats: int) -> list[float]:
    fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def read_bandwidth(repeats: int) -> list[dict]:
    a = torch.ones(256 * 1024 * 1024, dtype=torch.float32)             # 1 GiB
    rows = []
    for name, fn in (("sum", a.sum), ("amax", a.amax)):
        ts = timed(fn, repeats)
        rows.append({"bench": "read", "op": f"torch.{name}", "bytes": a.numel() * 4,
                     "gb_per_s_median": a.numel() * 4 / statistics.median(ts) / 1e9,
                     "gb_per_s_best": a.numel() * 4 / min(ts) / 1e9})
    return rows


def matmulnbits_m1(repeats: int, K: int = 4096, N: int = 11008, block: int = 128, copies: int = 8) -> dict:
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits = [], []
    for c in range(copies):
        inits += [numpy_helper.from_array(rng.integers(0, 256, (N, K // block, block // 2), dtype=np.uint8), f"q{c}"),
                  numpy_helper.from_array(rng.random(N * (K // block), dtype=np.float32) * 0.01, f"s{c}"),
                  numpy_helper.from_array(rng.integers(0, 256, N * ((K // block + 1) // 2), dtype=np.uint8), f"z{c}")]
        nodes.append(helper.make_node("MatMulNBits", ["x", f"q{c}", f"s{c}", f"z{c}"], [f"y{c}"], domain="com.microsoft",
                                      K=K, N=N, bits=4, block_size=block, accuracy_level=4))
    graph = helper.make_graph(nodes, "gemv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, K])],
                              [helper.make_tensor_value_info(f"y{c}", TensorProto.FLOAT, [1, N]) for c in range(copies)],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    x = rng.random((1, K), dtype=np.float32)
    ts = timed(lambda: session.run(None, {"x": x}), repeats)
    nbytes = copies * (N * K // 2 + N * (K // block) * 4 + N * ((K // block + 1) // 2))
    return {"bench": "matmulnbits_m1", "K": K, "N": N, "block": block, "accuracy_level": 4,
            "ms_per_gemv_median": statistics.median(ts) / copies * 1e3,
            "gb_per_s_median": nbytes / statistics.median(ts) / 1e9, "gb_per_s_best": nbytes / min(ts) / 1e9}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--save", action="store_true")
    args = ap.parse_args()
    rows = read_bandwidth(max(3, args.repeats // 4)) + [matmulnbits_m1(args.repeats)]
    for r in rows:
        r["threads"] = torch.get_num_threads()
        r = {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}
        print(json.dumps(r), flush=True)
        if args.save:
            RESULTS.parent.mkdir(exist_ok=True)
            with RESULTS.open("a") as f:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
