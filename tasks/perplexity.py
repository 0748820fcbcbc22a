"""`run_awq perplexity`: perplexity of a checkpoint on a target, optionally next to its float source."""
from __future__ import annotations

from dataclasses import replace

import json

from .model import load_with_options
from ..errors import UserError
from ..runtime.backends import EngineOptions


def _evaluate(model: str | None, target: str, dtype: str, act_dtype: str, flash_attention: bool, windows=None,
              dataset: str = "", seqlen: int = 2048, nsamples: int | None = None,
              engine_options: EngineOptions | None = None):
    m = load_with_options(model, target, replace(engine_options or EngineOptions(), flash_attention=flash_attention),
                          dtype, act_dtype)
    r = m.perplexity(dataset=dataset, seqlen=seqlen, nsamples=nsamples, windows=windows)
    return m.loaded, r["windows"], r["protocol"], r["perplexity"], r["mean_nll"]


def perplexity_task(model_path: str | None, target: str, dtype: str, act_dtype: str, flash_attention: bool,
                    dataset: str, seqlen: int, nsamples: int | None, compare: bool, float_model: str | None,
                    fmt: str, engine_options: EngineOptions | None = None) -> dict:
    loaded, windows, proto, ppl, nll = _evaluate(model_path, target, dtype, act_dtype, flash_attention,
                                                dataset=dataset, seqlen=seqlen, nsamples=nsamples,
                                                engine_options=engine_options)
    result = {"model": str(loaded.source), "perplexity": ppl, "mean_nll": nll,
              "quantization": None if loaded.quant is None else {
                  "bits": loaded.quant.spec.bits, "group_size": loaded.quant.spec.group_size,
                  "act_dtype": act_dtype},
              "protocol": proto}
    if compare:
        source = float_model
        if source is None:
            if loaded.quant is None:
                raise UserError("--compare needs a quantized --model (or --float_model to compare against).",
                                "Pass a quantized checkpoint, or name the other model with --float_model.")
            source = recorded_source(loaded.source)
        f_loaded, _, _, f_ppl, f_nll = _evaluate(source, target, dtype, act_dtype, flash_attention, windows=windows,
                                                  engine_options=engine_options)
        if f_loaded.tokenizer.get_vocab() != loaded.tokenizer.get_vocab():
            raise UserError(f"{f_loaded.source} and {loaded.source} use different tokenizers, so their perplexities "
                            "on the same windows are not comparable.", "Compare models that share a tokenizer.")
        result["compare"] = {"model": str(f_loaded.source), "perplexity": f_ppl, "mean_nll": f_nll,
                             "ratio": ppl / f_ppl}
    print(format_result(result, fmt))
    return result


def recorded_source(folder) -> str:
    raw = json.loads((folder / "config.json").read_text())
    source = raw.get("quantization_config", {}).get("source_model")
    if not source:
        raise UserError(f"{folder} does not record the float model it came from.", "Pass --float_model PATH.")
    return source


def format_result(r: dict, fmt: str) -> str:
    if fmt in ("json", "jsonl"):
        return json.dumps(r, indent=2 if fmt == "json" else None)
    p = r["protocol"]
    lines = [f"perplexity {r['perplexity']:.4f}  {r['model']}"]
    if "compare" in r:
        c = r["compare"]
        lines.append(f"perplexity {c['perplexity']:.4f}  {c['model']}  (float; quantized/float = {c['ratio']:.4f})")
    lines.append(f"protocol: dataset {p['dataset']}, joined with {p['join']}, {p['windows']} windows x {p['seqlen']} "
                 f"tokens ({p['tokens_scored']} scored), BOS {p['bos']}, dtype {p['dtype']}, target {p['target']}")
    if fmt == "md":
        lines = ["| model | perplexity |", "|---|---|", f"| {r['model']} | {r['perplexity']:.4f} |"] + (
            [f"| {r['compare']['model']} | {r['compare']['perplexity']:.4f} |"] if "compare" in r else []) + [
            "", lines[-1]]
    return "\n".join(lines)
