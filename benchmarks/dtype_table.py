"""What `--dtype fp32|bf16|fp16` does on each engine: perplexity and decode speed, per model (JSON lines, then a
markdown table).

Rows: the float model on the PyTorch engine; an RTN w4 g128 checkpoint of it on the PyTorch engine (`--act_dtype`
= the same dtype: w4afp32 / w4abf16 / w4afp16), the native engine and the ONNX Runtime CPU graph; the tt
emulation (performance config) on the float model, where fp16 is refused (the refusal is recorded, not measured).
Perplexity: shipped corpus test split, --seqlen 512 windows (at most --max_windows), no BOS. Decode: `run_awq
benchmark`, --prompt_length prompt, --new_tokens new tokens, median of --repeats, batch 1. Timings run one after
another in this process: run the script alone on the machine.

Usage: python benchmarks/dtype_table.py [--models default-llama default-qwen2] [--out FILE.jsonl] [--work DIR]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import sys
from pathlib import Path

from edgeawq.default_models import DEFAULT_MODELS
from edgeawq.errors import UserError
from edgeawq.evaluation.perplexity import eval_windows, load_eval_text, perplexity
from edgeawq.runtime.backends import BACKENDS, EngineOptions
from edgeawq.runtime.model_loader import load_model
from edgeawq.tasks.benchmark import benchmark_task
from edgeawq.tasks.quantize import quantize_task

DTYPES = ("fp32", "bf16", "fp16")
# row name -> (target, engine, quantized?)
ROWS = {"torch float": ("cpu", "torch", False), "torch w4": ("cpu", "torch", True),
        "native w4": ("cpu", "native", True), "onnx w4": ("cpu", "onnx", True), "tt float": ("tt", "auto", False)}


def quantize_w4(src: Path, out: Path) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        quantize_task(str(src), str(out), w_bit=4, group_size=128, zero_point=True, algorithm="pergrp",
                      awq_mode="none", awq_cache=None, dump_awq=None, lm_head=False, lm_head_group_size=32,
                      calib_dataset=None, n_samples=128, seqlen=512, seed=0, duo_scaling=False, progress=False,
                      overwrite=True)


def measure(path: Path, target: str, engine: str, dtype: str, args) -> dict:
    act = dtype                                        # quantized Linears of the torch engine: the same dtype
    options = EngineOptions(engine=engine)
    loaded = load_model(path, dtype, act)
    text, _ = load_eval_text("corpus-test")
    windows = eval_windows(loaded.tokenizer, text, args.seqlen, args.max_windows, loaded.max_context)
    with contextlib.redirect_stderr(io.StringIO()):
        ppl = perplexity(BACKENDS[target].make_engine(loaded, options), windows)[0]
        with contextlib.redirect_stdout(io.StringIO()):
            report = benchmark_task("benchmark", str(path), target, dtype, act, False, str(args.prompt_length),
                                    args.new_tokens, args.repeats, "json", None, engine_options=options,
                                    compare_target=None)
    return {"ppl": round(ppl, 3), "tok_s": round(report["results"][0]["tokens_per_s"], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["default-llama", "default-qwen2"], choices=list(DEFAULT_MODELS))
    ap.add_argument("--work", type=Path, default=Path("runs/dtypes"))
    ap.add_argument("--out", type=Path, default=None, help="Also append the JSON lines to this file.")
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--max_windows", type=int, default=8)
    ap.add_argument("--prompt_length", type=int, default=128)
    ap.add_argument("--new_tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rows = []
    for model in args.models:
        src = DEFAULT_MODELS[model]
        w4 = args.work / f"{model}-rtn-w4g128"
        quantize_w4(src, w4)
        for name, (target, engine, quantized) in ROWS.items():
            for dtype in DTYPES:
                row = {"model": model, "row": name, "target": target, "engine": engine, "dtype": dtype}
                try:
                    row.update(measure(w4 if quantized else src, target, engine, dtype, args))
                except UserError as e:                 # e.g. tt and fp16: recorded, not measured
                    row.update(ppl=None, tok_s=None, refused=e.problem)
                row.update(seqlen=args.seqlen, max_windows=args.max_windows, prompt_length=args.prompt_length,
                           new_tokens=args.new_tokens, repeats=args.repeats)
                print(json.dumps(row), flush=True)
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(json.dumps(row) + "\n")
                rows.append(row)
        shutil.rmtree(w4)
    print()
    print("| model | engine | " + " | ".join(f"{d} ppl | {d} tok/s" for d in DTYPES) + " |")
    print("|---|---|" + "---|---|" * len(DTYPES))
    for model in args.models:
        for name in ROWS:
            cells = []
            for dtype in DTYPES:
                r = next(r for r in rows if r["model"] == model and r["row"] == name and r["dtype"] == dtype)
                cells += ["refused" if r.get("refused") else r["ppl"], "" if r.get("refused") else r["tok_s"]]
            print(f"| {model} | {name} | " + " | ".join(str(c) for c in cells) + " |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
