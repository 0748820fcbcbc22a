"""`run_awq benchmark | benchmark_long`: prefill and decode speed per prompt length on a target.

Prompts are the first L tokens of the shipped corpus' test split (real text), L from `--prompt_lengths` or the
task's defaults. Lengths whose prompt plus new tokens exceed the model's context are skipped (reported as such)
when they come from the defaults and refused when the user asked for them.
"""
from __future__ import annotations

import json
import os
from dataclasses import replace

import torch

from ..errors import UserError
from ..runtime.backends import EngineOptions, require
from ..evaluation.benchmark import benchmark_lengths, generate_timed, weight_bytes_per_token
from ..kernels.quantizer import QuantSpec
from ..runtime.memory import release_free_memory
from ..runtime.model_loader import ACT_MODES, DTYPES, load_model
from ..runtime.random_model import random_model_shell, random_quantized_model, shape_names
from ..runtime.module_paths import get_module
from ..checkpoints.output_path import check_output_file
from ..evaluation.profiler import can_profile, is_profile_csv, profiler_for, write_profile_csv

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
                   profile: str | None, random_spec: QuantSpec | None = None,
                   engine_options: EngineOptions | None = None, compare_target: str | None = None,
                   random_lm_head_group: int | None = None, overwrite: bool = False, batch: int | None = None) -> dict:
    """`batch`: prompts decoded together (None: 1, or the data-parallel groups of a mesh). `random_spec`: build
    `model_path` (a shape name or config.json) with random weights quantized this way
    (`random_lm_head_group`: lm_head too). `compare_target`: measure that target too, same lengths, same run.
    `profile`: a CSV file (replacing only an earlier profile of this tool, unless `overwrite`)."""
    profile = check_output_file(profile, "--profile", "profile", is_profile_csv, overwrite)
    if new_tokens < 2:
        raise UserError(f"--new_tokens {new_tokens} is too small.", "Use at least 2 (time/token needs a decode step).")
    if repeats < 1:
        raise UserError(f"--repeats {repeats} is invalid.", "Use 1 or more.")
    if batch is not None and not 1 <= batch <= 256:
        raise UserError(f"--batch {batch} is invalid.", "Use 1 to 256 prompts per call.")
    if random_spec is not None and model_path is None:
        raise UserError("--random_weights needs --model SHAPE.", f"Use one of: {', '.join(shape_names())}.")
    lengths, user_given = parse_lengths(prompt_lengths, task)
    targets = [target] + ([compare_target] if compare_target and compare_target != target else [])
    for name in targets:
        require(name)
    if profile and target != "cpu":
        raise UserError(f"--profile times PyTorch modules; the {target} target runs an ONNX Runtime graph.",
                        "Profile with --target cpu, or drop --profile.")
    options = replace(engine_options or EngineOptions(), flash_attention=flash_attention)
    report = None
    for name in targets:
        part = _benchmark_target(task, name, model_path, dtype, act_dtype, options, lengths, user_given, new_tokens,
                                 repeats,
                                 profile if name == target else None, random_spec, random_lm_head_group, batch)
        if report is None:
            report = part
        else:
            report["compare"] = {k: part[k] for k in ("target", "engine", "results")}
            for row, other in zip(report["results"], part["results"]):
                if "tokens_per_s" in row and "tokens_per_s" in other:
                    row[f"tokens_per_s_vs_{name}"] = row["tokens_per_s"] / other["tokens_per_s"]
                    row[f"prefill_tokens_per_s_vs_{name}"] = (row["prefill_tokens_per_s"]
                                                               / other["prefill_tokens_per_s"])
    report["task"] = task
    print(format_report(report, fmt))
    return report


def _runs_existing_export(target: str, loaded, options: EngineOptions) -> bool:
    """True when the target will run an ONNX export or native state of `loaded` that already exists (no weights
    needed)."""
    from ..cpu_backend.backend import cpu_engine_choice

    choice = cpu_engine_choice(loaded, options) if target == "cpu" else None
    if choice == "native":
        from ..cpu_backend.native_state import cached

        return cached(loaded)
    if target not in ("cpu", "npu") or choice not in (None, "onnx"):
        return False
    from ..npu_backend.backend import export_exists

    return export_exists(loaded, options)


def _benchmark_target(task, target, model_path, dtype, act_dtype, options, lengths, user_given, new_tokens,
                      repeats, profile, random_spec, random_lm_head_group, batch=None) -> dict:
    from ..scale_out.driver import current

    backend = require(target)
    engine = None
    if current() is not None:                                    # rank 0 of a mesh run
        if random_spec is not None:
            from ..scale_out.rank_model import RANDOM_WEIGHTS_ON_MESH

            raise RANDOM_WEIGHTS_ON_MESH
        from .model import load_with_options

        model = load_with_options(model_path, target, options, dtype, act_dtype)
        loaded, engine = model.loaded, model.engine
    elif random_spec is not None:
        args = (model_path, random_spec, DTYPES[dtype], ACT_MODES[act_dtype])
        loaded = random_model_shell(*args, lm_head_group_size=random_lm_head_group)
        if not _runs_existing_export(target, loaded, options):
            loaded = random_quantized_model(*args, lm_head_group_size=random_lm_head_group)
    else:
        loaded = load_model(model_path, dtype, act_dtype)
    context = loaded.max_context
    too_long = [L for L in lengths if L + new_tokens > context]
    if too_long and user_given:
        raise UserError(f"Prompt length(s) {too_long} plus --new_tokens {new_tokens} exceed the model's context of "
                        f"{context} tokens.", "Choose shorter --prompt_lengths or fewer --new_tokens.")
    bytes_per_token = weight_bytes_per_token(loaded.model, get_module(loaded.model, loaded.family.embed))
    quant = None if loaded.quant is None else {"bits": loaded.quant.spec.bits,
                                               "group_size": loaded.quant.spec.group_size,
                                               "lm_head_group_size": loaded.quant.lm_head_group_size}
    source = str(loaded.source)
    engine = engine or backend.make_engine(loaded, options)
    if profile and not can_profile(engine):
        raise UserError(f"--profile times PyTorch modules or the native engine's steps; this run uses the "
                        f"{engine.name} engine (one ONNX Runtime graph).",
                        "Use --target cpu with --engine native (the default when it can run the model) or "
                        "--engine torch.")
    # engines that hold their own weight copy (tt: block-float tiles) know the bytes they read per token
    bytes_per_token = getattr(engine, "weight_bytes_per_token", bytes_per_token)
    release_free_memory()
    profile_rows = []

    def profile_length(L: int, prompt: torch.Tensor) -> None:
        profiler = profiler_for(engine, loaded.model)
        try:
            generate_timed(engine, prompt, new_tokens, profiler)
        finally:
            profiler.remove()
        profile_rows.extend(profiler.rows(L, new_tokens - 1))

    batch = batch or getattr(engine, "batch_rows", 1)
    rows = benchmark_lengths(engine, loaded.tokenizer, lengths, new_tokens, repeats, bytes_per_token, context,
                             profile_length if profile else None, batch)
    if profile:
        write_profile_csv(profile, profile_rows)
    mesh = engine.mesh_report() if hasattr(engine, "mesh_report") else None
    return {"task": task, "model": source, "target": target, "engine": engine.name, "dtype": dtype,
            "act_dtype": act_dtype if quant is not None else None, "quantization": quant,
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "batch": batch,
            "weight_bytes_per_token": bytes_per_token, "results": rows, **({"mesh": mesh} if mesh else {})}


def format_report(report: dict, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(report, indent=2)
    head = {k: v for k, v in report.items() if k not in ("results", "compare")}
    if fmt == "jsonl":
        lines = [json.dumps({**head, **row}) for row in report["results"]]
        if "compare" in report:
            c = report["compare"]
            lines += [json.dumps({**head, "target": c["target"], "engine": c["engine"], **row}) for row in c["results"]]
        return "\n".join(lines)
    lines = _md_table(report, report["results"], report["target"], report["engine"])
    if "compare" in report:
        c = report["compare"]
        lines += [""] + _md_table(report, c["results"], c["target"], c["engine"])
        lines += ["", f"| prompt | decode tok/s {report['target']}/{c['target']} | prefill tok/s "
                      f"{report['target']}/{c['target']} |", "|---|---|---|"]
        key = f"tokens_per_s_vs_{c['target']}"
        lines += [f"| {r['prompt_tokens']} | {r[key]:.2f}x | {r['prefill_' + key]:.2f}x |"
                  for r in report["results"] if key in r]
    return "\n".join(lines)


def _md_table(report: dict, rows: list[dict], target: str, engine: str) -> list[str]:
    lines = [f"{report['model']} | target {target} | engine {engine} | {report['dtype']} | "
             f"{report['threads']} threads | batch {report.get('batch', 1)} | "
             f"{report['weight_bytes_per_token'] / 1e6:.2f} MB of weights per step",
             "", "| prompt | new | total ms | prefill ms (TTFT) | ms/token | tokens/s | prefill tok/s | GB/s | "
             "peak RSS MB (weights + KV) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['prompt_tokens']} | skipped: {r['skipped']} | | | | | | | |")
            continue
        lines.append(f"| {r['prompt_tokens']} | {r['new_tokens']} | {r['total_ms']:.1f} | {r['prefill_ms']:.1f} | "
                     f"{r['time_per_token_ms']:.2f} | {r['tokens_per_s']:.1f} | {r['prefill_tokens_per_s']:.1f} | "
                     f"{r['achieved_gb_s']:.3f} | {_rss_cell(r)} |")
    return lines


def _rss_cell(row: dict) -> str:
    """Peak RSS in MiB, with the engine's weights and KV cache in it when it reports them."""
    mb = 2 ** 20
    cell = f"{row['peak_rss_bytes'] / mb:.0f}"
    if row.get("weights_bytes") is not None and row.get("kv_bytes") is not None:
        cell += f" ({row['weights_bytes'] / mb:.0f} + {row['kv_bytes'] / mb:.0f})"
    return cell
