"""`run_awq perplexity`: perplexity of a checkpoint on a target, optionally next to its float source."""
from __future__ import annotations

from dataclasses import replace

import json

from ..errors import UserError
from ..runtime.backends import EngineOptions, require
from ..runtime.model_loader import load_model
from ..evaluation.perplexity import eval_windows, load_eval_text, perplexity, protocol


def _evaluate(model: str | None, target: str, dtype: str, act_dtype: str, flash_attention: bool, windows=None,
              dataset: str = "", seqlen: int = 2048, nsamples: int | None = None,
              engine_options: EngineOptions | None = None):
    backend = require(target)
    loaded = load_model(model, dtype, act_dtype)
    if windows is None:
        text, desc = load_eval_text(dataset)
        windows = eval_windows(loaded.tokenizer, text, seqlen, nsamples, loaded.max_context)
    else:
        desc = None
    ppl, nll = perplexity(backend.make_engine(
        loaded, replace(engine_options or EngineOptions(), flash_attention=flash_attention)), windows)
    return loaded, windows, desc, ppl, nll


def perplexity_task(model_path: str | None, target: str, dtype: str, act_dtype: str, flash_attention: bool,
                    dataset: str, seqlen: int, nsamples: int | None, compare: bool, float_model: str | None,
                    fmt: str, engine_options: EngineOptions | None = None) -> dict:
    loaded, windows, desc, ppl, nll = _evaluate(model_path, target, dtype, act_dtype, flash_attention,
                                                dataset=dataset, seqlen=seqlen, nsamples=nsamples,
                                                engine_options=engine_options)
    result = {"model": str(loaded.source), "perplexity": ppl, "mean_nll": nll,
              "quantization": None if loaded.quant is None else {
                  "bits": loaded.quant.spec.bits, "group_size": loaded.quant.spec.group_size,
                  "act_dtype": act_dtype},
              "protocol": protocol(desc, windows, dtype, target)}
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
