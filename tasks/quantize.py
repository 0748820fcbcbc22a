"""`run_awq quantize`: stream a float checkpoint through AWQ (or RTN) into a quantized checkpoint."""
from __future__ import annotations

import json
import math
import sys
import time

import torch

from ..awq.calibration import calibration_blocks, search_sample_indices
from ..awq.gptq import GptqOptions
from ..awq.driver import QuantizeJob, QuantizeReport, quantize_streaming
from ..awq.layer_quantizer import AwqOptions
from ..awq.llm_awq_cache import is_llm_awq_cache, load_llm_awq_cache, save_llm_awq_cache
from ..awq.smoothquant import DEFAULT_ALPHA, WEIGHT_SPEC, SmoothQuantOptions, check_act_quant, check_alpha
from ..checkpoints.autoawq import autoawq_quantization_config, autoawq_tensors, check_exportable
from ..checkpoints.gguf_blocks import check_importable, import_blocks
from ..checkpoints.quantized_format import QuantizedCheckpointWriter
from ..errors import UserError
from ..kernels.formats import native_format
from ..kernels.quantizer import QuantSpec
from ..checkpoints.directory import checkpoint_problem
from ..checkpoints.output_path import check_output_file, check_output_folder
from ..runtime.model_loader import build_skeleton, check_state_fits, open_checkpoint
from ..runtime.sampling import check_seed
from ..runtime.module_paths import get_module


GROUP_SIZES = (32, 64, 128, 256, -1)


def _fitting(sizes: set[int]) -> str:
    fit = [g for g in GROUP_SIZES if g == -1 or all(k % g == 0 for k in sizes)]
    return ", ".join(str(g) for g in fit)


def check_group_sizes(skeleton, family, spec: QuantSpec, lm_head: bool, lm_head_group_size: int) -> None:
    """Refuse before any work when a layer's input size is not a multiple of its group size; the error lists the
    group sizes that do fit every layer of this model (e.g. hidden 576: 32, 64, -1)."""
    inputs = {f"{family.layers}.{i}.{rel}": get_module(skeleton, f"{family.layers}.{i}.{rel}").in_features
              for i in range(len(get_module(skeleton, family.layers))) for rel in family.linears}
    for name, k in inputs.items():
        if spec.group_size != -1 and k % spec.group_size:
            raise UserError(f"Cannot quantize layer {name}: its input size K={k} is not a multiple of the group size "
                            f"g={spec.group_size}.", f"Group sizes that fit every layer of this model: "
                            f"{_fitting(set(inputs.values()))} (pass one with --group_size).")
    if lm_head:
        k = get_module(skeleton, family.lm_head).in_features
        if lm_head_group_size != -1 and k % lm_head_group_size:
            raise UserError(f"Cannot quantize {family.lm_head}: its input size K={k} is not a multiple of "
                            f"--lm_head_group_size {lm_head_group_size}.",
                            f"Group sizes that fit it: {_fitting({k})}.")


def estimated_bytes(skeleton, family, shapes: dict, spec: QuantSpec, lm_head: bool, lm_head_group_size: int,
                    float_dtype: torch.dtype | None) -> int:
    """Bytes of the checkpoint to write: quantized Linears as codes (in their container) + fp16 scales + uint8
    zeros (+ fp16 mins) per group, the other tensors in their stored dtype."""
    container = 4 if spec.bits == 3 else spec.bits
    quantized = {f"{family.layers}.{i}.{rel}.weight": spec for i in range(len(get_module(skeleton, family.layers)))
                 for rel in family.linears}
    if lm_head:
        quantized[f"{family.lm_head}.weight"] = QuantSpec(spec.bits, lm_head_group_size, spec.zero_point)
    total = 0
    for name, (dtype, shape) in shapes.items():
        if name in quantized and len(shape) == 2:
            n, k = shape
            total += n * k * container // 8 + (5 if spec.mins else 3) * n * (k // quantized[name].group(k))
        else:
            total += math.prod(shape) * (float_dtype or dtype).itemsize
    return total


def _algorithm_name(algorithm: str, awq_mode: str) -> str:
    """quantization_config.algorithm: awq, rtn (round-to-nearest), gptq, awq+gptq, gguf-q4_0 or gguf-q4_1 (blocks
    taken over unchanged; `algorithm` is then "import-q4_0" / "import-q4_1")."""
    if algorithm.startswith("import"):
        return "gguf-" + algorithm.removeprefix("import-")
    if algorithm in ("gptq", "awq+gptq"):
        return "awq+gptq" if algorithm == "awq+gptq" and awq_mode != "none" else "gptq"
    if algorithm == "smoothquant":
        return algorithm
    return "awq" if awq_mode != "none" else "rtn"


WITHOUT_AWQ = ("pergrp", "import", "gptq", "smoothquant")     # algorithms that never run or load an AWQ search
DEFAULT_BITS, DEFAULT_GROUP_SIZE = 4, 128


def _weight_spec(algorithm: str, w_bit: int | None, group_size: int | None, zero_point: bool,
                 lm_head: bool) -> QuantSpec:
    """The weight grid: --w_bit / --group_size (None: not given, 4 and 128), except SmoothQuant's fixed int8 per
    output channel, symmetric (an explicit other grid, or --lm_head, is an error: its head stays float)."""
    if algorithm != "smoothquant":
        return QuantSpec(DEFAULT_BITS if w_bit is None else w_bit,
                         DEFAULT_GROUP_SIZE if group_size is None else group_size, zero_point).validate()
    if w_bit not in (None, 8) or group_size not in (None, -1):
        raise UserError(f"--algorithm smoothquant quantizes weights to int8 per output channel, not --w_bit "
                        f"{w_bit or 8} --group_size {group_size or -1}.",
                        "Drop --w_bit and --group_size (or pass --w_bit 8 --group_size -1); for other grids use "
                        "--algorithm awq, gptq or pergrp.")
    if lm_head:
        raise UserError("--algorithm smoothquant keeps lm_head in float (its W8A8 scheme covers the decoder "
                        "Linears).", "Drop --lm_head.")
    return WEIGHT_SPEC


def _smooth_options(algorithm: str, sq_alpha: float | None, act_quant: str | None) -> SmoothQuantOptions | None:
    """SmoothQuant settings for --algorithm smoothquant; --sq_alpha / --act_quant with another algorithm is an
    error (not ignored)."""
    if algorithm == "smoothquant":
        return SmoothQuantOptions(check_alpha(DEFAULT_ALPHA if sq_alpha is None else sq_alpha),
                                  check_act_quant(act_quant or "per_token"))
    for flag, given in (("--sq_alpha", sq_alpha is not None), ("--act_quant", act_quant is not None)):
        if given:
            raise UserError(f"{flag} is a SmoothQuant option, but --algorithm is {algorithm}.",
                            f"Pass --algorithm smoothquant, or drop {flag}.")
    return None
WITH_GPTQ = ("gptq", "awq+gptq")


def _gptq_options(algorithm: str, damp: float | None, act_order: bool) -> GptqOptions | None:
    """GPTQ settings for a GPTQ algorithm; a GPTQ flag given with another algorithm is an error (not ignored)."""
    if algorithm in WITH_GPTQ:
        return GptqOptions(GptqOptions.damp if damp is None else damp, act_order)
    for flag, given in (("--act_order", act_order), ("--gptq_damp", damp is not None)):
        if given:
            raise UserError(f"{flag} is a GPTQ option, but --algorithm is {algorithm}.",
                            f"Pass --algorithm gptq or awq+gptq, or drop {flag}.")
    return None


def _awq_mode(algorithm: str, awq_mode: str, awq_cache: str | None, dump_awq: str | None) -> str:
    """The AWQ mode that runs: none for algorithms without AWQ. An AWQ flag that would then be ignored (--awq load,
    --awq_cache, --dump_awq) is an error naming the algorithm; so is --dump_awq without a search."""
    if algorithm in WITHOUT_AWQ:
        for flag, given in (("--awq load", awq_mode == "load"), ("--awq_cache", awq_cache), ("--dump_awq", dump_awq)):
            if given:
                raise UserError(f"{flag} is an AWQ option, but --algorithm {algorithm} runs no AWQ.",
                                f"Use --algorithm awq or awq+gptq, or drop {flag}.")
        return "none"
    if awq_mode == "load" and not awq_cache:
        raise UserError("--awq load needs the cache file to load.", "Pass --awq_cache FILE (an llm-awq .pt cache).")
    if awq_cache and awq_mode != "load":
        raise UserError(f"--awq_cache is read by --awq load only, and --awq is {awq_mode}.",
                        "Pass --awq load to apply the cache, or drop --awq_cache (--dump_awq FILE saves a search).")
    if dump_awq and awq_mode != "run":
        raise UserError("--dump_awq saves search results, but no search runs with --awq "
                        f"{awq_mode}.", "Use --awq run, or drop --dump_awq.")
    return awq_mode


DEFAULT_SEARCH_TOKENS = 4096
SEARCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def resolve_search_dtype(choice: str) -> torch.dtype:
    """auto -> bfloat16 where the CPU multiplies it natively (avx512_bf16 or amx_bf16 in /proc/cpuinfo), else
    float32 (bfloat16 matmuls are emulated, and slower than float32, without them)."""
    if choice == "auto":
        from ..cpu_backend.native_build import cpu_flags

        return torch.bfloat16 if {"avx512_bf16", "amx_bf16"} & cpu_flags() else torch.float32
    if choice not in SEARCH_DTYPES:
        raise UserError(f"--search_dtype {choice!r} is not known.", "Use auto, fp32 or bf16.")
    return SEARCH_DTYPES[choice]


def quantize_task(model_path: str | None, out: str, w_bit: int | None, group_size: int | None, zero_point: bool,
                  algorithm: str,
                  awq_mode: str, awq_cache: str | None, dump_awq: str | None, lm_head: bool,
                  lm_head_group_size: int, calib_dataset: str | None, n_samples: int, seqlen: int, seed: int,
                  duo_scaling: bool, export: str = "native", max_shard_bytes: int = 512 * 2**20,
                  progress: bool = True, overwrite: bool = False, search_tokens: int = DEFAULT_SEARCH_TOKENS,
                  search_dtype: str = "auto", gptq_damp: float | None = None, act_order: bool = False,
                  sq_alpha: float | None = None, act_quant: str | None = None, calibrate_kv: bool = False) -> dict:
    """Quantize the float model at `model_path` into a checkpoint folder `out` (replacing only an earlier
    checkpoint of this tool there, or anything but protected places with `overwrite`: checkpoints/output_path.py).
    `search_tokens`: calibration tokens (whole samples) the scale-search loss is measured on (0: all);
    `search_dtype`: auto|fp32|bf16, the dtype of the calibration forward and the scale search (auto: bf16 where
    the CPU has AVX512-BF16 or AMX, else fp32). `algorithm` gptq / awq+gptq round with GPTQ (`gptq_damp`, default
    0.01, and `act_order`: refused with the other algorithms) over the same calibration data. `w_bit`, `group_size`
    None: not given (4 and 128; SmoothQuant's int8 per channel). `algorithm` smoothquant: W8A8 with `sq_alpha`
    (default 0.5) and `act_quant` per_token (default) or per_tensor. `calibrate_kv`: also store int8 KV cache channel
    scales from the calibration data (awq/kv_calibration.py). Returns the summary printed as JSON."""
    spec = _weight_spec(algorithm, w_bit, group_size, zero_point, lm_head)
    if export == "awq":
        check_exportable(spec.bits, spec.group_size, lm_head)
    if calibrate_kv and (export != "native" or algorithm == "import"):
        raise UserError("--calibrate_kv stores KV cache scales in the native checkpoint format"
                        f"{', which --export awq does not have' if export != 'native' else ''}"
                        f"{'; --algorithm import runs no calibration' if algorithm == 'import' else ''}.",
                        "Drop --calibrate_kv, or quantize to the native format with a calibrating algorithm "
                        "(awq, gptq, awq+gptq, smoothquant or pergrp).")
    gptq = _gptq_options(algorithm, gptq_damp, act_order)
    smooth = _smooth_options(algorithm, sq_alpha, act_quant)
    awq_mode = _awq_mode(algorithm, awq_mode, awq_cache, dump_awq)
    check_seed(seed)
    dump_awq = check_output_file(dump_awq, "--dump_awq", "AWQ cache", is_llm_awq_cache, overwrite)
    src = open_checkpoint(model_path, streamed=True)
    if src.quant is not None:
        raise UserError(f"{src.folder} is already a quantized checkpoint.", "Quantize the float model it came from.")
    out_path = check_output_folder(out, "checkpoint", [src.folder], overwrite, checkpoint_problem)
    skeleton = build_skeleton(src.config, src.family, src.folder)
    tied = bool(getattr(src.config, "tie_word_embeddings", False))
    check_state_fits({k: tuple(v.shape) for k, v in skeleton.state_dict().items()}, src.state.shapes(), src.folder,
                     optional=(f"{src.family.lm_head}.weight",) if tied else ())
    if algorithm == "import":
        spec = check_importable(src.state, src.family, spec, lm_head, str(model_path))
        algorithm = "import-q4_1" if spec.mins else "import-q4_0"
        if export != "native":
            raise UserError("--algorithm import writes the native format only.", "Drop --export awq.")
    check_group_sizes(skeleton, src.family, spec, lm_head, lm_head_group_size)
    # Values are checked as the driver reads each tensor (state.load refuses NaN/inf by name), so a damaged tensor
    # stops the run before the checkpoint appears, without a second pass over the weights.
    torch.manual_seed(seed)
    search = awq_mode == "run"
    calibrate = search or gptq is not None or smooth is not None or calibrate_kv
    calib = calibration_blocks(src.tokenizer, calib_dataset, n_samples, seqlen, seed) if calibrate else None
    precomputed = load_llm_awq_cache(awq_cache) if awq_mode == "load" else None
    dtype = resolve_search_dtype(search_dtype)
    options = AwqOptions(spec, search=search, duo_scaling=duo_scaling, dtype=dtype, gptq=gptq, smooth=smooth,
                         search_samples=search_sample_indices(n_samples, seqlen, search_tokens))
    job = QuantizeJob(options, calib, precomputed, lm_head, lm_head_group_size, progress=progress,
                      calibrate_kv=calibrate_kv)
    config = src.config.to_dict()
    if not config.get("architectures"):       # e.g. a GGUF source: transformers, vLLM and the genai builder need it
        config["architectures"] = [src.family.model_class]
    if lm_head and config.get("tie_word_embeddings"):
        config["tie_word_embeddings"] = False  # the head gets its own quantized weight; the embedding stays float
    qconfig = {
        "bits": spec.bits, "group_size": spec.group_size, "zero_point": spec.zero_point, "group_mins": spec.mins,
        "packing": native_format(spec.bits), "container_bits": 4 if spec.bits == 3 else spec.bits,
        "scale_dtype": "float16", "algorithm": _algorithm_name(algorithm, awq_mode),
        "awq": None if awq_mode == "none" else {
            "mode": awq_mode, "cache": awq_cache, "calib_dataset": calib_dataset or "shipped corpus train split",
            "n_samples": n_samples, "seqlen": seqlen, "seed": seed, "duo_scaling": duo_scaling, "n_grid": 20,
            "search_tokens": search_tokens, "search_dtype": str(dtype).removeprefix("torch.")},
        "gptq": None if gptq is None else {
            "damp": gptq.damp, "act_order": gptq.act_order, "block": gptq.block, "true_sequential": True,
            "calib_dataset": calib_dataset or "shipped corpus train split", "n_samples": n_samples, "seqlen": seqlen,
            "seed": seed},
        "act_quant": None if smooth is None else {
            "mode": smooth.act_quant, "alpha": smooth.alpha,
            "calib_dataset": calib_dataset or "shipped corpus train split", "n_samples": n_samples, "seqlen": seqlen,
            "seed": seed},
        "kv_cache": None if not calibrate_kv else {
            "dtype": "int8", "scales": "per_channel", "calib_dataset": calib_dataset or "shipped corpus train split",
            "n_samples": n_samples, "seqlen": seqlen, "seed": seed},
        "lm_head": lm_head, "lm_head_group_size": lm_head_group_size if lm_head else None,
        "quantized_modules": list(src.family.linears), "fused_layout": False,
        "source_model": str(src.folder),
    }
    layout = {}
    if export == "awq":
        qconfig = autoawq_quantization_config(spec.group_size)
        layout = {"tensor_fn": autoawq_tensors, "float_dtype": torch.float16}
    expected = estimated_bytes(skeleton, src.family, src.state.shapes(), spec, lm_head, lm_head_group_size,
                           layout.get("float_dtype"))
    t0 = time.perf_counter()
    with QuantizedCheckpointWriter(out_path, config, qconfig, src.folder, max_shard_bytes, expected_bytes=expected,
                                   tokenizer=src.tokenizer, **layout) as writer:
        if algorithm.startswith("import"):
            import_blocks(src.state, src.family, len(get_module(skeleton, src.family.layers)), writer)
            report = QuantizeReport(seconds=time.perf_counter() - t0)
        else:
            report = quantize_streaming(skeleton, src.config, src.family, src.state, job, writer)
    if dump_awq:
        save_llm_awq_cache(dump_awq, report.scales, report.clips)
    size = sum(p.stat().st_size for p in out_path.iterdir() if p.suffix == ".safetensors")
    summary = {"out": str(out_path), "bits": spec.bits, "group_size": spec.group_size,
               "algorithm": _algorithm_name(algorithm, awq_mode), "format": export, "lm_head": lm_head,
               "seconds": round(report.seconds, 2),
               "weights_bytes": size, "layer_seconds": [round(t, 2) for t in report.layer_seconds]}
    if report.groups:
        summary["mean_alpha"] = round(sum(g["alpha"] for g in report.groups) / len(report.groups), 3)
    print(json.dumps(summary), file=sys.stderr if progress else sys.stdout)
    return summary
