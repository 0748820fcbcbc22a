"""The Python API: what `run_awq` does, as functions and one model object (docs/api.md has runnable examples).

    import edgeawq
    edgeawq.quantize(None, "runs/w4", bits=4, group_size=128, algorithm="rtn")      # None: the embedded default
    model = edgeawq.load("runs/w4", target="cpu")
    [completion] = model.generate("The hacker ethic", max_new_tokens=16)
    model.perplexity(dataset="corpus-test", seqlen=512, nsamples=4)["perplexity"]
    model.benchmark(prompt_lengths=[64], new_tokens=16, repeats=1)

The CLI runs these same functions (tasks/ call them). Errors a caller can fix raise `edgeawq.UserError` (a
`.problem` and a `.fix`).
"""
from __future__ import annotations

from pathlib import Path

from .errors import UserError
from .tasks.model import Model, load

__all__ = ["quantize", "load", "Model", "UserError"]

ALGORITHMS = {"awq": ("awq", "run"), "rtn": ("pergrp", "none"), "pergrp": ("pergrp", "none"),
              "gptq": ("gptq", "none"), "awq+gptq": ("awq+gptq", "run"), "smoothquant": ("smoothquant", "none")}


def quantize(model: str | Path | None, out: str | Path, bits: int | None = None, group_size: int | None = None,
             algorithm: str = "awq", *, symmetric: bool = False, lm_head: bool = False, lm_head_group_size: int = 32,
             calib_dataset: str | None = None, n_samples: int = 128, seqlen: int = 512, seed: int = 0,
             duo_scaling: bool = False, export: str = "native", awq_cache: str | None = None,
             dump_awq: str | None = None, overwrite: bool = False, progress: bool = True,
             search_tokens: int = 4096, search_dtype: str = "auto", gptq_damp: float | None = None,
             act_order: bool = False, sq_alpha: float | None = None, act_quant: str | None = None,
             calibrate_kv: bool = False) -> dict:
    """Quantize the float model at `model` (a folder, an alias, or None for the embedded default) into the
    checkpoint folder `out`. `algorithm`: "awq" (search), "rtn" (round-to-nearest), "awq-load" (llm-awq results
    from `awq_cache`), "gptq" or "awq+gptq" (AWQ scales and clips, then GPTQ rounding; `gptq_damp`, default 0.01,
    and `act_order` are refused with the other algorithms) or "smoothquant" (W8A8: int8 weights per channel,
    `sq_alpha` default 0.5, `act_quant` "per_token" (default) or "per_tensor"). `bits`, `group_size` None: 4 and 128
    (smoothquant: 8 and -1). `calibrate_kv`: also store calibrated int8 KV cache scales. Returns the summary (out, bits, group_size, algorithm, format, seconds,
    weights_bytes...)."""
    from .tasks.quantize import quantize_task

    if algorithm == "awq-load":
        kind, mode = "awq", "load"
    elif algorithm in ALGORITHMS:
        kind, mode = ALGORITHMS[algorithm]
    else:
        raise UserError(f"algorithm {algorithm!r} is not known.",
                        "Use awq, rtn, awq-load, gptq, awq+gptq or smoothquant.")
    return quantize_task(None if model is None else str(model), str(out), None if bits is None else int(bits),
                         None if group_size is None else int(group_size), not symmetric,
                         kind, mode, awq_cache, dump_awq, lm_head, int(lm_head_group_size), calib_dataset, n_samples,
                         seqlen, seed, duo_scaling, export, progress=progress, overwrite=overwrite,
                         search_tokens=search_tokens, search_dtype=search_dtype, gptq_damp=gptq_damp,
                         act_order=act_order, sq_alpha=sq_alpha, act_quant=act_quant, calibrate_kv=calibrate_kv)
