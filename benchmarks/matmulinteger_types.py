"""ONNX Runtime's MatMulInteger on the CPU provider: int8 x int8 against uint8 (zero point 128) x int8 activations,
the choice behind the W8A8 graph (npu_backend/graph_builder.py). Both give the same int32 products (checked here).

Shapes: a SmolLM2 / default-model-sized projection and a Llama-2-7B one (K x N), M = 1 (decode) and 128 (prefill)
tokens; median of --repeats runs of --iters calls each, 2 intra-op threads. Prints JSON lines, with the u8s8 / s8s8
speed ratio.
Usage: python benchmarks/matmulinteger_types.py [--out FILE.jsonl] [--repeats 5] [--iters 50]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

SHAPES = [(576, 1536), (4096, 11008)]


def session(weight: np.ndarray, activation_type: int, zero_point: bool, threads: int) -> ort.InferenceSession:
    K, N = weight.shape
    inputs = ["x", "w"] + (["zp"] if zero_point else [])
    inits = [numpy_helper.from_array(weight, "w")]
    if zero_point:
        inits.append(numpy_helper.from_array(np.array(128, np.uint8), "zp"))
    graph = helper.make_graph([helper.make_node("MatMulInteger", inputs, ["y"])], "g",
                              [helper.make_tensor_value_info("x", activation_type, [None, K])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [None, N])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)], ir_version=10)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def timed(sess: ort.InferenceSession, x: np.ndarray, repeats: int, iters: int) -> float:
    for _ in range(5):
        sess.run(None, {"x": x})
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iters):
            sess.run(None, {"x": x})
        runs.append((time.perf_counter() - t0) / iters)
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    for K, N in SHAPES:
        weight = rng.integers(-127, 128, (K, N)).astype(np.int8)
        s8 = session(weight, TensorProto.INT8, False, args.threads)
        u8 = session(weight, TensorProto.UINT8, True, args.threads)
        for M in (1, 128):
            xs = rng.integers(-127, 128, (M, K)).astype(np.int8)
            xu = (xs.astype(np.int16) + 128).astype(np.uint8)
            if not np.array_equal(s8.run(None, {"x": xs})[0], u8.run(None, {"x": xu})[0]):
                raise SystemExit("u8s8 with zero point 128 differs from s8s8")
            t_s8, t_u8 = timed(s8, xs, args.repeats, args.iters), timed(u8, xu, args.repeats, args.iters)
            row = {"K": K, "N": N, "M": M, "s8s8_us": round(t_s8 * 1e6, 1), "u8s8_us": round(t_u8 * 1e6, 1),
                   "u8s8_speedup": round(t_s8 / t_u8, 2), "threads": args.threads,
                   "onnxruntime": ort.__version__, "products_equal": True}
            print(json.dumps(row), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
