"""`run_awq --task benchmark | benchmark_long`: prefill and decode speed per prompt length on a target.

Prompts are the first L tokens of the shipped corpus' test split (real text), L from `--prompt_lengths` or the
task's defaults. Lengths whose prompt plus new tokens exceed the model's context are skipped (reported as such)
when they come from the defaults and refused when the user asked for them.
"""
from __future__ import annotations

import json
import os

import torch

from ..data_sources import corpus_split
from ..errors import UserError
from ..runtime.backends import require
from ..runtime.benchmark import generate_timed, measure_length, warm_up, weight_bytes_per_token
from ..kernels.quantizer import QuantSpec
from ..runtime.model_loader import DTYPES, load_model
from ..runtime.random_model import random_quantized_model, shape_names
from ..runtime.module_paths import get_module
from ..runtime.profiler import ModuleProfiler, write_profile_csv

DEFAULT_LENGTHS = {"benchmark": (4, 8, 16, 32, 64, 128, 256), "benchmark_long": (512, 1024, 2048, 4096)}


def parse_lengths(text: str | None, task: str) -> tuple[list[int], bool]:
    """-> (lengths, user_given)."""
    if text is None:
        return list(DEFAULT_LENGTHS[task]), False
    try:
        lengths = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        lengths = []
    if not lengths or min(lengths) < 1:
        raise UserError(f"--prompt_lengths {text!r} is invalid.", "Give positive integers separated by commas, "
                        "e.g. --prompt_lengths 64,512.")
    return lengths, True


def benchmark_task(task: str, model_path: str | None, target: str, dtype: str, act_dtype: str,
                   flash_attention: bool, prompt_lengths: str | None, new_tokens: int, repeats: int, fmt: str,
                   profile: str | None, random_spec: QuantSpec | None = None) -> dict:
    """`random_spec`: build `model_path` (a shape name or config.json) with random weights quantized this way."""
    if new_tokens < 2:
        raise UserError(f"--new_tokens {new_tokens} is too small.", "Use at least 2 (time/token needs a decode step).")
    if repeats < 1:
        raise UserError(f"--repeats {repeats} is invalid.", "Use 1 or more.")
    lengths, user_given = parse_lengths(prompt_lengths, task)
    backend = require(target)
    if random_spec is not None:
        if model_path is None:
            raise UserError("--random_weights needs --model SHAPE.", f"Use one of: {', '.join(shape_names())}.")
        loaded = random_quantized_model(model_path, random_spec, DTYPES[dtype], DTYPES[act_dtype])
    else:
        loaded = load_model(model_path, dtype, act_dtype)
    engine = backend.make_engine(loaded, flash_attention)
    context = loaded.max_context
    too_long = [L for L in lengths if L + new_tokens > context]
    if too_long and user_given:
        raise UserError(f"Prompt length(s) {too_long} plus --new_tokens {new_tokens} exceed the model's context of "
                        f"{context} tokens.", "Choose shorter --prompt_lengths or fewer --new_tokens.")
    text = corpus_split("test").read_text(encoding="utf-8")
    stream = torch.tensor(loaded.tokenizer(text, add_special_tokens=False)["input_ids"])
    if max(lengths) > stream.numel():
        raise UserError(f"The longest prompt ({max(lengths)} tokens) is longer than the benchmark text "
                        f"({stream.numel()} tokens).", "Use shorter --prompt_lengths.")
    bytes_per_token = weight_bytes_per_token(loaded.model, get_module(loaded.model, loaded.family.embed))
    runnable = [L for L in lengths if L not in too_long]
    if runnable:
        warm_up(engine, stream[None, : runnable[0]])
    rows, profile_rows = [], []
    for L in lengths:
        if L in too_long:
            rows.append({"prompt_tokens": L, "skipped": f"exceeds the model's context of {context} tokens"})
            continue
        prompt = stream[None, :L]
        rows.append(vars(measure_length(engine, prompt, new_tokens, repeats, bytes_per_token)))
        if profile:
            profiler = ModuleProfiler(loaded.model)
            try:
                generate_timed(engine, prompt, new_tokens, profiler)
            finally:
                profiler.remove()
            profile_rows += profiler.rows(L, new_tokens - 1)
    if profile:
        write_profile_csv(profile, profile_rows)
    report = {"task": task, "model": str(loaded.source), "target": target, "engine": engine.name, "dtype": dtype,
              "act_dtype": act_dtype if loaded.quant is not None else None,
              "quantization": None if loaded.quant is None else {"bits": loaded.quant.spec.bits,
                                                                 "group_size": loaded.quant.spec.group_size},
              "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
              "weight_bytes_per_token": bytes_per_token, "results": rows}
    print(format_report(report, fmt))
    return report


def format_report(report: dict, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(report, indent=2)
    head = {k: v for k, v in report.items() if k != "results"}
    if fmt == "jsonl":
        return "\n".join(json.dumps({**head, **row}) for row in report["results"])
    lines = [f"{report['model']} | target {report['target']} | engine {report['engine']} | {report['dtype']} | "
             f"{report['threads']} threads | {report['weight_bytes_per_token'] / 1e6:.2f} MB of weights per token",
             "", "| prompt | new | total ms | prefill ms (TTFT) | ms/token | tokens/s | prefill tok/s | GB/s | "
             "peak RSS MB |", "|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        if "skipped" in r:
            lines.append(f"| {r['prompt_tokens']} | skipped: {r['skipped']} | | | | | | | |")
            continue
        lines.append(f"| {r['prompt_tokens']} | {r['new_tokens']} | {r['total_ms']:.1f} | {r['prefill_ms']:.1f} | "
                     f"{r['time_per_token_ms']:.2f} | {r['tokens_per_s']:.1f} | {r['prefill_tokens_per_s']:.1f} | "
                     f"{r['achieved_gb_s']:.3f} | {r['peak_rss_bytes'] / 2**20:.0f} |")
    return "\n".join(lines)
