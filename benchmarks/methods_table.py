"""One table of quantization methods: method x bits x group size -> perplexity, quantize time, checkpoint size and
decode speed, per model (JSON lines, then a markdown table).

Rows (--methods, each where it applies): float; rtn, awq, gptq at w4 and w3 (group 128 on the default models,
64 on SmolLM2 whose hidden size 576 is not a multiple of 128) and the *-g32 rows at group 32; rtn-w8 (int8
weights per output channel, weight-only); smoothquant W8A8 per token and per tensor at --sq_alpha 0.5, and per
tensor at alpha 0 (the same int8 scheme without smoothing: what the migration itself buys).

Per row: `quantize_s` (run_awq quantize in-process, default calibration 128 x 512 tokens of the shipped train split,
seed 0), `weights_bytes` (the checkpoint's safetensors files), perplexity on the PyTorch reference (`ppl_ref`:
fp32 float parts, quantized Linears with fp32 activations, W8A8 Linears with their int8 activations) and on the
native engine (`ppl_native`: what `--target cpu` runs by default; its int8 per-group activations apply to every
quantized row), shipped corpus test split, --seqlen 512 windows (at most --max_windows), no BOS; decode tokens/s of
the native engine and the ONNX Runtime CPU graph (`run_awq benchmark`: --prompt_length prompt, --new_tokens new
tokens, median of --repeats runs, batch 1, this machine's threads). Timing runs one after another in this process:
run the script alone on the machine.

Usage: python benchmarks/methods_table.py [--models default-llama default-qwen2 smollm2] [--methods ...]
       [--out FILE.jsonl] [--work runs/methods]
Rows already in --out (same model and method) are kept and not measured again: an interrupted run resumes.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import sys
import time
from pathlib import Path

from edgeawq.default_models import DEFAULT_MODELS
from edgeawq.errors import UserError
from edgeawq.evaluation.perplexity import eval_windows, load_eval_text, perplexity
from edgeawq.runtime.backends import BACKENDS, EngineOptions
from edgeawq.runtime.engines import make_engine
from edgeawq.runtime.model_loader import load_model
from edgeawq.tasks.benchmark import benchmark_task
from edgeawq.tasks.quantize import quantize_task

# name -> (algorithm, awq mode, bits, extra quantize_task arguments); bits None: the algorithm's own grid
METHODS = {
    "rtn-w4": ("pergrp", "none", 4, {}), "awq-w4": ("awq", "run", 4, {}), "gptq-w4": ("gptq", "none", 4, {}),
    "rtn-w3": ("pergrp", "none", 3, {}), "awq-w3": ("awq", "run", 3, {}), "gptq-w3": ("gptq", "none", 3, {}),
    "rtn-w4-g32": ("pergrp", "none", 4, {"group_size": 32}), "awq-w4-g32": ("awq", "run", 4, {"group_size": 32}),
    "gptq-w4-g32": ("gptq", "none", 4, {"group_size": 32}), "awq-w3-g32": ("awq", "run", 3, {"group_size": 32}),
    "rtn-w8": ("pergrp", "none", 8, {"group_size": -1, "zero_point": False}),
    "sq-token": ("smoothquant", "run", None, {"act_quant": "per_token", "sq_alpha": 0.5}),
    "sq-tensor": ("smoothquant", "run", None, {"act_quant": "per_tensor", "sq_alpha": 0.5}),
    "sq-tensor-a0": ("smoothquant", "run", None, {"act_quant": "per_tensor", "sq_alpha": 0.0}),
}


def source(model: str) -> Path:
    if model == "smollm2":
        from edgeawq.default_models import packaged_model

        return packaged_model("smollm2")
    return DEFAULT_MODELS[model]


def quantize(src: Path, out: Path, method: str, group: int) -> tuple[float, dict]:
    algorithm, mode, bits, extra = METHODS[method]
    args = dict(w_bit=bits, group_size=None if bits is None else group, zero_point=True)
    args.update(extra)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        summary = quantize_task(str(src), str(out), algorithm=algorithm, awq_mode=mode, awq_cache=None, dump_awq=None,
                                lm_head=False, lm_head_group_size=32, calib_dataset=None, n_samples=128, seqlen=512,
                                seed=0, duo_scaling=False, progress=False, overwrite=True, **args)
    return time.perf_counter() - t0, summary


def ppl(path: Path, engine: str, seqlen: int, max_windows: int) -> float:
    loaded = load_model(path, "fp32", "fp32")
    text, _ = load_eval_text("corpus-test")
    windows = eval_windows(loaded.tokenizer, text, seqlen, max_windows, loaded.max_context)
    run = (make_engine(loaded, True) if engine == "torch" else
           BACKENDS["cpu"].make_engine(loaded, EngineOptions(engine=engine)))
    return perplexity(run, windows)[0]


def decode_speed(path: Path, engine: str, args) -> float:
    with contextlib.redirect_stdout(io.StringIO()):
        report = benchmark_task("benchmark", str(path), "cpu", "fp32", "fp32", False, str(args.prompt_length),
                                args.new_tokens, args.repeats, "json", None,
                                engine_options=EngineOptions(engine=engine))
    return report["results"][0]["tokens_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["default-llama", "default-qwen2"],
                    choices=[*sorted(DEFAULT_MODELS), "smollm2"])
    ap.add_argument("--methods", nargs="+", default=["float", *METHODS], choices=["float", *METHODS])
    ap.add_argument("--work", type=Path, default=Path("runs/methods"))
    ap.add_argument("--out", type=Path, default=None, help="Also append the JSON lines to this file.")
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--max_windows", type=int, default=24)
    ap.add_argument("--prompt_length", type=int, default=128)
    ap.add_argument("--new_tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    done = {}                                            # rows already in --out are kept, not measured again
    if args.out and args.out.exists():
        for line in args.out.read_text().splitlines():
            r = json.loads(line)
            done[(r["model"], r["method"])] = r
    rows = []
    for model in args.models:
        src = source(model)
        group = 64 if model == "smollm2" else 128
        for method in args.methods:
            if (model, method) in done:
                rows.append(done[(model, method)])
                continue
            row = {"model": model, "method": method}
            if method == "float":
                row.update(bits=None, group_size=None, quantize_s=None, ppl_ref=round(ppl(src, "torch", args.seqlen,
                                                                                          args.max_windows), 3))
                row["weights_bytes"] = sum(p.stat().st_size for p in Path(src).glob("*.safetensors")) or None
            else:
                out = args.work / f"{model}-{method}"
                seconds, summary = quantize(src, out, method, group)
                row.update(bits=summary["bits"], group_size=summary["group_size"], quantize_s=round(seconds, 1),
                           weights_bytes=summary["weights_bytes"])
                row["ppl_ref"] = round(ppl(out, "torch", args.seqlen, args.max_windows), 3)
                row["ppl_native"] = round(ppl(out, "native", args.seqlen, args.max_windows), 3)
                row["native_tok_s"] = round(decode_speed(out, "native", args), 1)
                try:
                    row["onnx_tok_s"] = round(decode_speed(out, "onnx", args), 1)
                except UserError as e:                   # e.g. per-channel int8: MatMulNBits needs 2^n blocks
                    row["onnx_tok_s"], row["onnx_refused"] = None, e.problem
                shutil.rmtree(out)
            row.update(seqlen=args.seqlen, max_windows=args.max_windows, prompt_length=args.prompt_length,
                       new_tokens=args.new_tokens, repeats=args.repeats)
            print(json.dumps(row), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
            rows.append(row)
    print()
    print("| model | method | bits | group | ppl (reference) | ppl (native) | quantize (s) | size (MB) | native tok/s "
          "| onnx tok/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = [r["model"], r["method"], r["bits"], r["group_size"], r["ppl_ref"], r.get("ppl_native"),
                 r["quantize_s"], None if not r["weights_bytes"] else f"{r['weights_bytes'] / 1e6:.1f}",
                 r.get("native_tok_s"), r.get("onnx_tok_s")]
        print("| " + " | ".join("" if c is None else str(c) for c in cells) + " |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
