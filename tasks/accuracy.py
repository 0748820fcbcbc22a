"""`run_awq accuracy`: teacher-forced top-1 / top-5 agreement and per-token logits PCC of a target against
the float reference (evaluation/accuracy.py has the protocol), as in tt-metal's LLM demos.

The reference is `--float_model`, else the float source recorded in a quantized checkpoint, else the model
itself; it always runs on the cpu target with the PyTorch engine and fp32 activations.
"""
from __future__ import annotations

import json
from dataclasses import asdict

from ..errors import UserError
from ..evaluation.accuracy import AccuracyReport, teacher_forced_accuracy
from ..runtime.backends import EngineOptions, require
from ..runtime.model_loader import load_model
from ..evaluation.perplexity import eval_windows, load_eval_text
from .model import load_with_options
from .perplexity import recorded_source


def accuracy_task(model_path: str | None, target: str, dtype: str, act_dtype: str, dataset: str, seqlen: int,
                  nsamples: int, float_model: str | None, fmt: str, engine_options: EngineOptions,
                  pcc_tokens: int = 16) -> dict:
    model = load_with_options(model_path, target, engine_options, dtype, act_dtype)   # on the mesh when one runs
    loaded, engine = model.loaded, model.engine
    reference_path = float_model or (recorded_source(loaded.source) if loaded.quant is not None else
                                     str(loaded.source))
    reference = load_model(reference_path, "fp32", "fp32")
    if reference.tokenizer.get_vocab() != loaded.tokenizer.get_vocab():
        raise UserError(f"{reference.source} and {loaded.source} use different tokenizers, so their logits cannot be "
                        "compared token by token.", "Pass a --float_model that shares the model's tokenizer.")
    text, desc = load_eval_text(dataset)
    windows = eval_windows(loaded.tokenizer, text, seqlen, nsamples, loaded.max_context)
    ref_engine = require("cpu").make_engine(reference, EngineOptions(engine="torch"))
    report = teacher_forced_accuracy(ref_engine, engine, windows, seqlen // 2)
    result = {"model": str(loaded.source), "reference_model": str(reference.source), "target": target,
              "engine": engine.name, "precision": engine.config.to_json() if hasattr(engine, "config") else None,
              "protocol": {"dataset": desc, "windows": report.windows, "seqlen": report.seqlen,
                           "prefill_tokens": report.prefill, "positions": report.positions,
                           "reference": "cpu target, PyTorch engine, fp32"},
              **{k: v for k, v in asdict(report).items() if k not in ("rows", "windows", "seqlen", "prefill",
                                                                        "positions")},
              "per_token": per_token_rows(report, loaded.tokenizer, pcc_tokens)}
    print(format_result(result, fmt))
    return result


def per_token_rows(report: AccuracyReport, tokenizer, count: int) -> list[dict]:
    """The first `count` decode positions of the first window (the demo README's per-token table)."""
    rows = [r for r in report.rows if r.window == 0 and r.mode == "decode"][:count]

    def text(token: int) -> str:                       # one table cell: newlines and pipes made visible
        return tokenizer.decode([token]).replace("\n", "\\n").replace("|", "/")

    return [{"position": r.position, "input": text(r.token), "reference_top1": text(r.reference_top1),
             "target_top1": text(r.target_top1), "match": r.reference_top1 == r.target_top1, "pcc": r.pcc}
            for r in rows]


def format_result(r: dict, fmt: str) -> str:
    if fmt in ("json", "jsonl"):
        return json.dumps(r, indent=2 if fmt == "json" else None)
    p = r["protocol"]
    lines = [f"accuracy of {r['model']} on target {r['target']} ({r['engine']}) against {r['reference_model']}",
             f"top-1 {100 * r['top1']:.2f}%  top-5 {100 * r['top5']:.2f}%  (prefill top-1 "
             f"{100 * r['top1_prefill']:.2f}%, decode top-1 {100 * r['top1_decode']:.2f}%)",
             f"logits PCC mean {r['mean_pcc']:.6f}  min {r['min_pcc']:.6f}",
             f"perplexity {r['target_ppl']:.4f} (reference {r['reference_ppl']:.4f})",
             f"protocol: {p['dataset']}, {p['windows']} windows x {p['seqlen']} tokens, first {p['prefill_tokens']} "
             f"prefilled then teacher-forced one at a time, {p['positions']} positions; reference {p['reference']}",
             "", "| position | input token | reference top-1 | target top-1 | match | PCC |", "|---|---|---|---|---|---|"]
    lines += [f"| {t['position']} | `{t['input']}` | `{t['reference_top1']}` | `{t['target_top1']}` | "
              f"{'yes' if t['match'] else 'no'} | {t['pcc']:.6f} |" for t in r["per_token"]]
    return "\n".join(lines)
