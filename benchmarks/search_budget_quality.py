"""AWQ quality under the search-budget settings: --search_tokens / --search_dtype against the full search.

For each default model and w3 / w4 g128: AWQ with (4096 tokens, bf16) = the defaults on an AVX512-BF16 CPU,
(4096, fp32) = the defaults elsewhere, and (0, fp32) = every calibration token in float32 (the behaviour before
these settings existed); calibration 128 x 512 tokens of the train split, seed 0. Perplexity as in
benchmarks/quality.py (shipped test split, 512-token windows, fp32 activations). Prints one JSON line per run
with the perplexity, its change against the full search, and the quantization seconds.

Usage: python benchmarks/search_budget_quality.py [--models default-llama default-qwen2] [--out runs/budget]
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from edgeawq.default_models import DEFAULT_MODELS

from quality import evaluate, quantize_quietly

VARIANTS = [(0, "fp32"), (4096, "bf16"), (4096, "fp32")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=sorted(DEFAULT_MODELS))
    ap.add_argument("--out", type=Path, default=Path("runs/budget"))
    args = ap.parse_args()
    for model in args.models:
        for bits in (3, 4):
            full = None
            for tokens, dtype in VARIANTS:
                out = args.out / f"{model}-w{bits}-{tokens}-{dtype}"
                seconds = quantize_quietly(DEFAULT_MODELS[model], out, bits, 128, "awq", False, 128, 512,
                                           search_tokens=tokens, search_dtype=dtype)
                ppl, _ = evaluate(out, "fp32", 512)
                full = ppl if full is None else full
                print(json.dumps({"model": model, "config": f"w{bits} g128", "search_tokens": tokens,
                                  "search_dtype": dtype, "perplexity": round(ppl, 3),
                                  "vs_full_search_pct": round(100 * (ppl / full - 1), 2),
                                  "quantize_s": round(seconds, 1)}), flush=True)
                shutil.rmtree(out)


if __name__ == "__main__":
    main()
