"""Quality table: float vs RTN vs AWQ perplexity, quantization time and checkpoint size, per default model.

Configurations: w4 g128, w3 g128, w4 g32, w4 g128 with lm_head quantized (RTN, group 32). Perplexity: shipped
corpus test split, joined with "\n\n", non-overlapping windows of --seqlen tokens (default 512: the default
models were trained on 256-token windows, and 2048-token windows would measure context extrapolation more than
quantization), no BOS, fp32
float weights; quantized Linears with fp32 activations (--act_dtype fp32, so the table shows the weight
quantization alone) unless --act_dtype bf16. AWQ: defaults of `run_awq --task quantize` (128 x 512 calibration
tokens from the train split, seed 0) unless --n_samples / --calib_seqlen say otherwise.

Prints one JSON line per measurement, then a markdown table.
Usage: python benchmarks/quality.py [--models default-llama default-qwen2] [--out runs/quality]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import time
from pathlib import Path

from edgeawq.default_models import DEFAULT_MODELS
from edgeawq.runtime.engines import make_engine
from edgeawq.runtime.model_loader import load_model
from edgeawq.evaluation.perplexity import eval_windows, load_eval_text, perplexity
from edgeawq.tasks.quantize import quantize_task

CONFIGS = [("w4 g128", 4, 128, False), ("w3 g128", 3, 128, False), ("w4 g32", 4, 32, False),
           ("w4 g128 +lm_head", 4, 128, True)]


def evaluate(path, act_dtype, seqlen):
    loaded = load_model(path, "fp32", act_dtype)
    text, _ = load_eval_text("corpus-test")
    windows = eval_windows(loaded.tokenizer, text, seqlen, None, loaded.max_context)
    return perplexity(make_engine(loaded, True), windows)[0], windows.shape[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=sorted(DEFAULT_MODELS))
    ap.add_argument("--out", type=Path, default=Path("runs/quality"))
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--n_samples", type=int, default=128)
    ap.add_argument("--calib_seqlen", type=int, default=512)
    ap.add_argument("--act_dtype", choices=["fp32", "bf16"], default="fp32")
    args = ap.parse_args()
    rows = []
    for model in args.models:
        src = DEFAULT_MODELS[model]
        float_ppl, n_windows = evaluate(src, args.act_dtype, args.seqlen)
        float_bytes = sum(p.stat().st_size for p in src.glob("*.safetensors"))
        row = {"model": model, "config": "float (bf16 file)", "method": "float", "perplexity": round(float_ppl, 3),
               "quantize_s": None, "weights_bytes": float_bytes, "windows": n_windows, "seqlen": args.seqlen,
               "act_dtype": "fp32"}
        print(json.dumps(row), flush=True)
        rows.append(row)
        for name, bits, group, lm_head in CONFIGS:
            for method in ("rtn", "awq"):
                out = args.out / f"{model}-{name.replace(' ', '_').replace('+', '')}-{method}"
                t0 = time.perf_counter()
                with contextlib.redirect_stdout(io.StringIO()):
                    quantize_task(str(src), str(out), bits, group, True, "awq", "run" if method == "awq" else "none",
                                  None, None, lm_head, 32, None, args.n_samples, args.calib_seqlen, 0, False,
                                  progress=False)
                seconds = time.perf_counter() - t0
                ppl, _ = evaluate(out, args.act_dtype, args.seqlen)
                row = {"model": model, "config": name, "method": method, "perplexity": round(ppl, 3),
                       "quantize_s": round(seconds, 1),
                       "weights_bytes": sum(p.stat().st_size for p in out.glob("*.safetensors")),
                       "windows": n_windows, "seqlen": args.seqlen, "act_dtype": args.act_dtype}
                print(json.dumps(row), flush=True)
                rows.append(row)
                shutil.rmtree(out)
    print()
    print("| model | config | method | perplexity | quantize time (s) | weights (MB) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        t = "" if r["quantize_s"] is None else f"{r['quantize_s']:.1f}"
        print(f"| {r['model']} | {r['config']} | {r['method']} | {r['perplexity']:.2f} | {t} | "
              f"{r['weights_bytes'] / 1e6:.2f} |")


if __name__ == "__main__":
    main()
