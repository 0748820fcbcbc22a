"""Time one greedy generation with onnxruntime-genai (run as a subprocess by cpu_vs_peers.py).

Protocol (docs/onnx_runtime.md and benchmarks/cpu_vs_peers.py): `append_tokens(prompt)` is the prefill; the first `generate_next_token()` gives the
first token; decode time is counted from the second one. Prompt ids are random (speed does not depend on them).
Prints one JSON line: prefill_s, decode_s, decode_tokens.
Usage: python -m benchmarks.peers.genai_runner FOLDER PROMPT_TOKENS NEW_TOKENS
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np


def main() -> None:
    import onnxruntime_genai as og

    folder, prompt_tokens, new_tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    model = og.Model(folder)
    ids = np.random.default_rng(0).integers(3, 4000, size=(1, prompt_tokens), dtype=np.int32)

    def generate(n):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=prompt_tokens + n, do_sample=False)
        gen = og.Generator(model, params)
        t0 = time.perf_counter()
        gen.append_tokens(ids)
        t1 = time.perf_counter()
        gen.generate_next_token()
        t2 = time.perf_counter()
        steps = 0
        while not gen.is_done() and steps < n - 1:
            gen.generate_next_token()
            steps += 1
        return t1 - t0, time.perf_counter() - t2, steps

    generate(2)                                             # warm-up
    prefill, decode, steps = generate(new_tokens)
    print(json.dumps({"prefill_s": prefill, "decode_s": decode, "decode_tokens": steps}))


if __name__ == "__main__":
    main()
