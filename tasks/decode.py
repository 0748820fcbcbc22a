"""`run_awq decode`: generate text from prompts on a target."""
from __future__ import annotations

from dataclasses import replace

import json
import sys

from pathlib import Path

from ..checkpoints.atomic import write_text_atomic
from ..checkpoints.output_path import check_output_file
from ..errors import UserError
from .model import load_with_options
from ..runtime.backends import EngineOptions
from ..runtime.generate import resolve_max_seq_len
from ..runtime.prompts import check_prompt_text, read_prompts_file
from ..runtime.sampling import SamplingConfig

OUTPUT_FORMAT = "edgeawq-decode"   # the "format" of --output files: {"format", "model", "target", "engine", "dtype",
                                   # "sampling", "results": [...]}


def is_decode_output(path: Path) -> bool:
    """True for an earlier --output file of this tool (replacing it loses nothing of the user's)."""
    data = json.loads(path.read_bytes().decode("utf-8"))
    return isinstance(data, dict) and (data.get("format") == OUTPUT_FORMAT
                                       or set(data) == {"model", "target", "engine", "dtype", "sampling", "results"})


def decode_task(model_path: str | None, target: str, dtype: str, flash_attention: bool, max_seq_len: int | None,
                prompts: list[str], prompts_file: str | None, max_new_tokens: int, temperature: float,
                top_p: float, top_k: int, seed: int, stop_at_eos: bool, instruct: bool, output: str | None,
                act_dtype: str = "bf16", engine_options: EngineOptions | None = None, overwrite: bool = False) -> None:
    output = check_output_file(output, "--output", "decode result", is_decode_output, overwrite)
    if prompts and prompts_file:
        raise UserError("Both --prompt and --prompts were given.", "Use one of them.")
    texts = read_prompts_file(prompts_file) if prompts_file else [
        check_prompt_text(p, f"--prompt {i + 1}") for i, p in enumerate(prompts)]
    if not texts:
        raise UserError("No prompt was given.", "Pass --prompt TEXT (repeatable) or --prompts FILE.")
    sampling = SamplingConfig(temperature, top_p, top_k, seed).validate()   # refuse bad values before loading
    model = load_with_options(model_path, target, replace(engine_options or EngineOptions(),
                                                          flash_attention=flash_attention), dtype, act_dtype)
    loaded, engine = model.loaded, model.engine
    resolve_max_seq_len(max_seq_len, loaded.config)
    stream = None
    if len(texts) == 1:
        sys.stdout.write(texts[0])
        sys.stdout.flush()

        def stream(piece: str) -> None:
            sys.stdout.write(piece)
            sys.stdout.flush()

    results = model.generate(texts, max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                             stop_at_eos=stop_at_eos, instruct=instruct, max_seq_len=max_seq_len, stream=stream)
    if stream is not None:
        sys.stdout.write("\n")
    else:
        for i, r in enumerate(results):
            print(f"[{i}] {r.prompt}{r.text}\n")
    r0 = results[0]
    mean_ms = sum(r0.token_ms) / len(r0.token_ms) if r0.token_ms else float("nan")
    print(f"[{loaded.source.name} | target {target} | engine {engine.name} | {dtype} | batch {len(texts)}] "
          f"prefill {r0.prefill_ms:.1f} ms, {mean_ms:.2f} ms/token", file=sys.stderr)
    if output:
        write_text_atomic(output, json.dumps({
            "format": OUTPUT_FORMAT, "model": str(loaded.source), "target": target, "engine": engine.name, "dtype": dtype,
            "sampling": vars(sampling),
            "results": [r.as_json() for r in results]}, indent=2) + "\n")
