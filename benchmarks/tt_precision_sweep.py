"""Accuracy of the default models under Tenstorrent precision configs (the tt target's CPU emulation).

For each default model: the two named configs (performance, accuracy) and four MLP weight-format variants of the
accuracy config (ff1_3/ff2 = bfp4/bfp4, bfp4/bfp8, bfp8/bfp8, bf16/bf16; fidelity, attention and KV cache as in
that config), each scored with evaluation/accuracy.py's teacher-forced protocol against the float model on the cpu
target (PyTorch, fp32): top-1 and top-5 agreement, mean logits PCC, and the perplexity of both over the scored
positions. Windows: the shipped corpus' test split, --windows x --seqlen tokens, the first half prefilled.
Prints one JSON line per row, then a markdown table; --save appends the lines to
benchmarks/results/tt_precision_sweep.jsonl.
Usage: python benchmarks/tt_precision_sweep.py [--windows 16] [--seqlen 256] [--save] | --table
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from edgeawq.default_models import DEFAULT_MODELS
from edgeawq.evaluation.accuracy import teacher_forced_accuracy
from edgeawq.runtime.backends import EngineOptions, require
from edgeawq.runtime.model_loader import load_model
from edgeawq.evaluation.perplexity import eval_windows, load_eval_text
from edgeawq.tt_backend.backend import make_tt_engine
from edgeawq.tt_backend.precision import load_precision, with_mlp

MLP_VARIANTS = (("bfp4", "bfp4"), ("bfp4", "bfp8"), ("bfp8", "bfp8"), ("bf16", "bf16"))
RESULTS = Path(__file__).resolve().parent / "results" / "tt_precision_sweep.jsonl"


def configs(model_type: str, n_layers: int):
    accuracy = load_precision("accuracy", model_type, n_layers)
    yield load_precision("performance", model_type, n_layers)
    yield accuracy
    for ff1_3, ff2 in MLP_VARIANTS:
        yield with_mlp(accuracy, ff1_3, ff2, f"MLP {ff1_3}/{ff2}")


def table(rows: list[dict]) -> str:
    lines = ["| model | config | MLP ff1_3/ff2 | attention / KV | fidelity MLP, attention | top-1 | top-5 | mean PCC | "
             "PPL (float) |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['config']} | {r['mlp']} | {r['attention']} / {r['kv_cache']} | "
              f"{r['mlp_fidelity']}, {r['attention_fidelity']} | {100 * r['top1']:.1f}% | {100 * r['top5']:.2f}% | "
              f"{r['mean_pcc']:.5f} | {r['ppl']:.2f} ({r['reference_ppl']:.2f}) |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--save", action="store_true")
    ap.add_argument("--table", action="store_true", help="only print the table of the saved results")
    args = ap.parse_args()
    if args.table:
        print(table([json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]))
        return
    os.environ.setdefault("EDGEAWQ_CACHE", tempfile.mkdtemp(prefix="tt_sweep_"))
    text, _ = load_eval_text("corpus-test")
    rows = []
    for alias in DEFAULT_MODELS:
        reference = load_model(alias, "fp32", "fp32")
        windows = eval_windows(reference.tokenizer, text, args.seqlen, args.windows, reference.max_context)
        ref_engine = require("cpu").make_engine(reference, EngineOptions(engine="torch"))
        for config in configs(reference.family.model_type, reference.config.num_hidden_layers):
            engine = make_tt_engine(load_model(alias, "fp32", "fp32"), config)
            r = teacher_forced_accuracy(ref_engine, engine, windows, args.seqlen // 2)
            layer = config.layers[0]
            row = {"model": alias, "config": config.name, "mlp": f"{layer.tensors['ff1_3']}/{layer.tensors['ff2']}",
                   "attention": layer.tensors["wqkv"], "kv_cache": layer.tensors["kv_cache"],
                   "mlp_fidelity": f"{layer.ops['li_ff1_3']}/{layer.ops['li_ff2']}",
                   "attention_fidelity": layer.ops["li_qkv_decode"], "top1": r.top1, "top5": r.top5,
                   "mean_pcc": r.mean_pcc, "ppl": r.target_ppl, "reference_ppl": r.reference_ppl,
                   "windows": r.windows, "seqlen": r.seqlen, "positions": r.positions}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.save:
        RESULTS.parent.mkdir(exist_ok=True)
        with RESULTS.open("a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    print()
    print(table(rows))

if __name__ == "__main__":
    main()
