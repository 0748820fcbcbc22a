"""`run_awq --task quantize`: stream a float checkpoint through AWQ (or RTN) into a quantized checkpoint."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import transformers

from ..awq.calibration import calibration_blocks
from ..awq.driver import QuantizeJob, quantize_streaming
from ..awq.layer_quantizer import AwqOptions
from ..awq.llm_awq_cache import load_llm_awq_cache, save_llm_awq_cache
from ..checkpoints.autoawq import autoawq_quantization_config, autoawq_tensors, check_exportable
from ..checkpoints.quantized_format import QuantizedCheckpointWriter
from ..errors import UserError
from ..kernels.formats import native_format
from ..kernels.quantizer import QuantSpec
from ..runtime.model_loader import open_checkpoint
from ..runtime.module_paths import get_module


def check_group_sizes(skeleton, family, spec: QuantSpec, lm_head: bool, lm_head_group_size: int) -> None:
    """Refuse before any work when a layer's input size is not a multiple of its group size."""
    for i in range(len(get_module(skeleton, family.layers))):
        for rel in family.linears:
            name = f"{family.layers}.{i}.{rel}"
            spec.group(get_module(skeleton, name).in_features, name)
    if lm_head:
        head_spec = QuantSpec(spec.bits, lm_head_group_size, spec.zero_point).validate()
        head_spec.group(get_module(skeleton, family.lm_head).in_features, family.lm_head)


def quantize_task(model_path: str | None, out: str, w_bit: int, group_size: int, zero_point: bool, algorithm: str,
                  awq_mode: str, awq_cache: str | None, dump_awq: str | None, lm_head: bool,
                  lm_head_group_size: int, calib_dataset: str | None, n_samples: int, seqlen: int, seed: int,
                  duo_scaling: bool, export: str = "native", max_shard_bytes: int = 512 * 2**20,
                  progress: bool = True) -> dict:
    spec = QuantSpec(w_bit, group_size, zero_point).validate()
    if export == "awq":
        check_exportable(spec.bits, spec.group_size, lm_head)
    if algorithm == "pergrp":
        awq_mode = "none"
    if awq_mode == "load" and not awq_cache:
        raise UserError("--awq load needs the cache file to load.", "Pass --awq_cache FILE (an llm-awq .pt cache).")
    if dump_awq and awq_mode != "run":
        raise UserError("--dump_awq saves search results, but no search runs with --awq "
                        f"{awq_mode}.", "Use --awq run, or drop --dump_awq.")
    src = open_checkpoint(model_path, streamed=True)
    if src.quant is not None:
        raise UserError(f"{src.folder} is already a quantized checkpoint.", "Quantize the float model it came from.")
    out_path = Path(out).expanduser().absolute()
    if out_path == src.folder.absolute():
        raise UserError("--out is the source model folder.", "Write the quantized checkpoint to a new folder.")
    with torch.device("meta"):
        skeleton = getattr(transformers, src.family.model_class)(src.config)
    check_group_sizes(skeleton, src.family, spec, lm_head, lm_head_group_size)
    torch.manual_seed(seed)
    search = awq_mode == "run"
    calib = calibration_blocks(src.tokenizer, calib_dataset, n_samples, seqlen, seed) if search else None
    precomputed = load_llm_awq_cache(awq_cache) if awq_mode == "load" else None
    job = QuantizeJob(AwqOptions(spec, search=search, duo_scaling=duo_scaling), calib, precomputed, lm_head,
                      lm_head_group_size, progress=progress)
    config = src.config.to_dict()
    if lm_head and config.get("tie_word_embeddings"):
        config["tie_word_embeddings"] = False  # the head gets its own quantized weight; the embedding stays float
    qconfig = {
        "bits": spec.bits, "group_size": spec.group_size, "zero_point": spec.zero_point,
        "packing": native_format(spec.bits), "container_bits": 4 if spec.bits == 3 else spec.bits,
        "scale_dtype": "float16", "algorithm": "awq" if awq_mode != "none" else "rtn",
        "awq": None if awq_mode == "none" else {
            "mode": awq_mode, "cache": awq_cache, "calib_dataset": calib_dataset or "shipped corpus train split",
            "n_samples": n_samples, "seqlen": seqlen, "seed": seed, "duo_scaling": duo_scaling, "n_grid": 20},
        "lm_head": lm_head, "lm_head_group_size": lm_head_group_size if lm_head else None,
        "quantized_modules": list(src.family.linears), "fused_layout": False,
        "source_model": str(src.folder),
    }
    with torch.device("meta"):
        skeleton = getattr(transformers, src.family.model_class)(src.config)
    layout = {}
    if export == "awq":
        qconfig = autoawq_quantization_config(spec.group_size)
        layout = {"tensor_fn": autoawq_tensors, "float_dtype": torch.float16}
    with QuantizedCheckpointWriter(out_path, config, qconfig, src.folder, max_shard_bytes, **layout) as writer:
        report = quantize_streaming(skeleton, src.config, src.family, src.state, job, writer)
    if dump_awq:
        save_llm_awq_cache(dump_awq, report.scales, report.clips)
    size = sum(p.stat().st_size for p in out_path.iterdir() if p.suffix == ".safetensors")
    summary = {"out": str(out_path), "bits": spec.bits, "group_size": spec.group_size,
               "algorithm": "awq" if awq_mode != "none" else "rtn", "format": export, "lm_head": lm_head, "seconds": round(report.seconds, 2),
               "weights_bytes": size}
    if report.groups:
        summary["mean_alpha"] = round(sum(g["alpha"] for g in report.groups) / len(report.groups), 3)
    print(json.dumps(summary), file=sys.stderr if progress else sys.stdout)
    return summary
