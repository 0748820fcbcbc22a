"""KV cache precision on the native engine: accuracy against the fp32 cache, and decode speed at depth.

* accuracy (--models: default-llama, default-qwen2, smollm2): an RTN w4 checkpoint of each (g128; SmolLM2 g64:
  hidden 576) with calibrated int8 KV scales (--calibrate_kv, default calibration) in --work, made once. Per cache
  (fp32, bf16, fp16, int8 per token, int8 with the calibrated channel scales): teacher-forced accuracy
  (evaluation/accuracy.py) of the native engine with that cache against the native engine with the fp32 cache, on
  --windows windows of --seqlen tokens of the test split (half prefilled, half decoded one token at a time, so every
  position reads the cache): top-1 / top-5 agreement, mean / min logits PCC, perplexity of both.
* speed (--speed_contexts, e.g. 2048 8192 32768 on --speed_model llama-3.2-1b): one native engine on the random-
  weight shape (w4 g128, lm_head w4 g128, paged cache of 64-token blocks); per context and KV dtype a cache filled
  with that many tokens of random content (benchmarks/decode_at_depth.py); each round decodes --new_tokens from that
  depth once per KV dtype (rotating order): decode tok/s medians, the median per-round ratio to fp32, the cache's
  size.
JSON lines. Run it alone on the machine.

Usage: python benchmarks/kv_precision.py [--models default-llama default-qwen2 smollm2] [--windows 8]
       [--speed_contexts 2048 8192 32768] [--rounds 2] [--out F.jsonl]
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from jsonl_io import append_jsonl

DTYPES = ["fp32", "bf16", "fp16", "int8"]
GROUP = {"smollm2": 64}


def checkpoint(model: str, work: Path) -> Path:
    import edgeawq

    out = work / f"{model}-rtn-w4g{GROUP.get(model, 128)}-kv"
    if not (out / "config.json").exists():
        edgeawq.quantize(model, out, bits=4, group_size=GROUP.get(model, 128), algorithm="rtn", calibrate_kv=True)
    return out


CACHES = {"fp32": ("fp32", "per_token"), "bf16": ("bf16", "per_token"), "fp16": ("fp16", "per_token"),
          "int8": ("int8", "per_token"), "int8-calibrated": ("int8", "calibrated")}   # name -> (kv_dtype, kv_scales)


def native(path: Path, cache: str):
    from edgeawq.runtime.backends import BACKENDS, EngineOptions
    from edgeawq.runtime.model_loader import load_model

    kv_dtype, kv_scales = CACHES[cache]
    return BACKENDS["cpu"].make_engine(load_model(str(path)), EngineOptions(engine="native", kv_dtype=kv_dtype,
                                                                            kv_scales=kv_scales))


def accuracy(args) -> list[dict]:
    from edgeawq.data_sources import corpus_split
    from edgeawq.evaluation.accuracy import teacher_forced_accuracy
    from edgeawq.evaluation.perplexity import eval_windows
    from edgeawq.runtime.model_loader import load_model

    rows = []
    for model in args.models:
        path = checkpoint(model, Path(args.work))
        loaded = load_model(str(path))
        text = corpus_split("test").read_text(encoding="utf-8")
        windows = eval_windows(loaded.tokenizer, text, args.seqlen, args.windows, loaded.max_context)
        reference = native(path, "fp32")
        for kv_dtype in CACHES:
            r = teacher_forced_accuracy(reference, native(path, kv_dtype), windows, args.seqlen // 2)
            rows.append({"measure": "accuracy", "model": model, "checkpoint": path.name, "kv_dtype": kv_dtype,
                         "windows": r.windows, "seqlen": r.seqlen, "top1": round(r.top1, 4), "top5": round(r.top5, 4),
                         "mean_pcc": round(r.mean_pcc, 6), "min_pcc": round(r.min_pcc, 6),
                         "ppl_fp32_cache": round(r.reference_ppl, 4), "ppl": round(r.target_ppl, 4)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def speed(args) -> list[dict]:
    import torch

    from decode_at_depth import decode_tok_s, fill
    from edgeawq.cpu_backend.kv_cache import PagedKV
    from edgeawq.kernels.kv_quant import kv_bytes_per_token
    from edgeawq.kernels.quantizer import QuantSpec
    from edgeawq.runtime.backends import BACKENDS, DEFAULT_KV_BLOCK, EngineOptions
    from edgeawq.runtime.random_model import random_quantized_model

    loaded = random_quantized_model(args.speed_model, QuantSpec(4, 128).validate(), torch.bfloat16, torch.float32,
                                    lm_head_group_size=128)
    vocab = loaded.config.vocab_size
    engine = BACKENDS["cpu"].make_engine(loaded, EngineOptions(engine="native"))
    rows = []
    for context in args.speed_contexts:
        caches = {}
        for kv_dtype in DTYPES:                        # one filled cache per type, kept while the rounds run
            engine.kv = caches[kv_dtype] = PagedKV(engine.decoder, engine.layers, engine.kv_heads, engine.head_dim,
                                                   DEFAULT_KV_BLOCK, None, kv_dtype)
            engine.start(1, context + args.new_tokens)
            fill(engine, context)
        samples = {d: [] for d in DTYPES}
        for r in range(args.rounds):
            for kv_dtype in DTYPES[r % 4:] + DTYPES[:r % 4]:
                engine.kv = caches[kv_dtype]
                samples[kv_dtype].append(decode_tok_s(engine, context, args.new_tokens, vocab))
        for kv_dtype in DTYPES:
            ratios = [a / b for a, b in zip(samples[kv_dtype], samples["fp32"])]
            rows.append({"measure": "decode", "model": args.speed_model, "context": context, "kv_dtype": kv_dtype,
                         "decode_tok_s": round(statistics.median(samples[kv_dtype]), 2),
                         "samples": [round(x, 2) for x in samples[kv_dtype]],
                         "median_round_ratio_vs_fp32": round(statistics.median(ratios), 3),
                         "kv_mb_at_context": round(context * kv_bytes_per_token(
                             kv_dtype, engine.layers, engine.kv_heads, engine.head_dim) / 2**20, 1)})
            print(json.dumps(rows[-1]), flush=True)
        del caches
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=["default-llama", "default-qwen2", "smollm2"])
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--work", default="runs/kv_precision")
    ap.add_argument("--speed_model", default="llama-3.2-1b")
    ap.add_argument("--speed_contexts", nargs="*", type=int, default=[])
    ap.add_argument("--new_tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=None, help="also append the JSON lines to this file")
    args = ap.parse_args()
    rows = accuracy(args) + (speed(args) if args.speed_contexts else [])
    append_jsonl(args.out, rows)


if __name__ == "__main__":
    main()
