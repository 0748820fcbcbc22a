"""The one registry of execution targets (`--target NAME`).

A backend turns a loaded checkpoint into an engine (see runtime/engines.py for the interface). Each target's code
lives in its own package (cpu_backend/, npu_backend/, tt_backend/), which this registry names but never imports at
module level: a backend imports the runtime, never the other way. When a requested backend cannot run here,
`require` raises a UserError saying why; nothing ever falls back silently to another target.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from .model_loader import DTYPE_NAMES, LoadedModel


@dataclass(frozen=True)
class EngineOptions:
    engine: str = "auto"                 # cpu: native (own C++ decoder), onnx (whole-graph ONNX Runtime), torch
                                         # (PyTorch reference), auto
    flash_attention: bool = False        # cpu torch engine: grouped QKV + static KV cache
    ep: str | None = None                # npu: execution-provider preference list (None = the default list)
    strict_ep: bool = False              # npu: a fallback to the CPU provider is an error
    onnx_dir: Path | None = None         # npu: export folder (None = the export cache)
    accuracy_level: int = 4              # npu: MatMulNBits accuracy_level of the export
    tt_precision: str = "performance"    # tt: performance, accuracy or a precision JSON file
    tt_device: str = "auto"              # tt: Linears on a Tenstorrent card through ttnn: auto, on, off
    prefill_chunk: int | None = None     # every engine: prefill in chunks of this many tokens (None = the engine's
                                         # default, 0 = one call); runtime/chunked_prefill.py
    kv_block_size: int | None = None     # cpu native / torch --flash_attention: KV cache blocks of this many tokens
                                         # (None = DEFAULT_KV_BLOCK, 0 = one contiguous block per row); elsewhere
                                         # only None is accepted
    kv_max_blocks: int | None = None     # the paged cache's pool (None = batch x context, resident only as used)
    kv_dtype: str = "fp32"               # cpu native (all) and torch --flash_attention (all, as round-tripped
                                         # values): fp32, bf16, fp16, int8 (kernels/kv_quant.py)
    kv_scales: str = "per_token"         # int8 KV: per_token, or calibrated (the checkpoint's --calibrate_kv channel
                                         # scales; README "Long context": not better than per_token yet)


DEFAULT_KV_BLOCK = 64          # tokens per KV cache block (benchmarks/kv_block_size.py)


def kv_paging(options: EngineOptions) -> tuple[int | None, int | None]:
    """(block size or None for a contiguous cache, max blocks) of an engine that has a paged KV cache."""
    block = DEFAULT_KV_BLOCK if options.kv_block_size is None else options.kv_block_size or None
    if block is None and options.kv_max_blocks is not None:
        raise UserError("--kv_max_blocks sizes a paged KV cache, and --kv_block_size 0 asks for a contiguous one.",
                        "Drop one of the two flags.")
    return block, options.kv_max_blocks


KV_SCALES = ("per_token", "calibrated")


def use_kv_channels(options: EngineOptions, calibrated: bool, source) -> bool:
    """Whether an int8 KV cache takes the checkpoint's calibrated channel scales (`calibrated`: it has them):
    --kv_scales calibrated (a UserError without them, or with another --kv_dtype); per_token (the default) never."""
    if options.kv_scales not in KV_SCALES:
        raise UserError(f"--kv_scales {options.kv_scales!r} is not known.", f"Use one of: {', '.join(KV_SCALES)}.")
    if options.kv_scales == "per_token":
        return False
    if options.kv_dtype != "int8":
        raise UserError(f"--kv_scales {options.kv_scales} chooses the scales of an int8 KV cache, and --kv_dtype is "
                        f"{options.kv_dtype}.", "Add --kv_dtype int8, or drop --kv_scales.")
    if not calibrated:
        raise UserError(f"--kv_scales calibrated needs calibrated KV cache scales, and {source} has none.",
                        "Quantize the model with `run_awq quantize --calibrate_kv`, or drop --kv_scales.")
    return True


def refuse_kv_options(engine: str, options: EngineOptions) -> None:
    """--kv_block_size / --kv_max_blocks / --kv_dtype / --kv_scales on an engine whose KV cache is neither paged nor
    of a chosen precision (transformers, onnx, npu, tt, mesh runs): a UserError naming the flag."""
    if options.kv_block_size is not None or options.kv_max_blocks is not None:
        flag = "--kv_block_size" if options.kv_block_size is not None else "--kv_max_blocks"
        raise UserError(f"{flag} sizes a paged KV cache, which {engine} does not have.",
                        "Paged KV caches run on --engine native and on --engine torch --flash_attention; drop the "
                        "flag for this engine.")
    if options.kv_scales != "per_token":
        raise UserError(f"--kv_scales {options.kv_scales} chooses the scales of the int8 KV cache of the native engine "
                        f"and of --engine torch --flash_attention, which {engine} does not have.",
                        "Drop --kv_scales for this engine, or run --engine native.")
    if options.kv_dtype != "fp32":
        raise UserError(f"--kv_dtype {options.kv_dtype} sets the KV cache of the native engine and of --engine "
                        f"torch --flash_attention; {engine} keeps its own (the tt target: through --tt_precision).",
                        "Drop --kv_dtype for this engine, or run --engine native.")


@dataclass(frozen=True)
class Backend:
    """A target: `module` (relative to the edgeawq package) defines `make_engine(loaded, options) -> engine`; it is
    imported only when the target is used. `requires`: Python packages the target cannot run without."""
    name: str
    description: str
    module: str
    requires: tuple[tuple[str, str, str], ...] = ()     # (import name, display name, how to install it)

    def unavailable_reason(self) -> str | None:
        for module, name, install in self.requires:
            if importlib.util.find_spec(module) is None:
                return f"{name} is not installed ({install})."
        return None

    def make_engine(self, loaded: LoadedModel, options: EngineOptions):
        if self.name != "cpu":
            refuse_kv_options(f"--target {self.name}", options)
        engine = importlib.import_module(self.module, __package__.rpartition(".")[0]).make_engine(loaded, options)
        if options.prefill_chunk is not None:
            engine.prefill_chunk = options.prefill_chunk
        return engine


BACKENDS: dict[str, Backend] = {
    "cpu": Backend("cpu", "the host CPU: quantized checkpoints run the project's native C++ engine (--engine native, "
                          "the default where it can run them), else the exported ONNX Runtime graph (MatMulNBits) on "
                          "the CPU provider (--engine onnx); --engine torch runs PyTorch (the reference; grouped QKV + "
                          "static KV cache with --flash_attention)", ".cpu_backend.backend"),
    "npu": Backend("npu", "ONNX Runtime graph with MatMulNBits on the best execution provider of --ep (VitisAI, "
                          "QNN, OpenVINO, DML, then CPU)", ".npu_backend.backend",
                   (("onnxruntime", "ONNX Runtime", "pip install onnxruntime, or your NPU vendor's build"),)),
    "tt": Backend("tt", "Tenstorrent numerics emulated on the CPU: block-float weights and KV cache, math fidelity, "
                        "bf16 activations, per --tt_precision", ".tt_backend.backend"),
}


def note_float32_arithmetic(engine: str, loaded: LoadedModel, why: str) -> None:
    """Engines whose float arithmetic is float32 (native, onnx) take `--dtype bf16|fp16` as the precision of the
    float weights only (their values are rounded to it when loaded); say so once on stderr, with `why`."""
    if loaded.dtype != torch.float32:
        name = DTYPE_NAMES[loaded.dtype]
        print(f"[{engine}] --dtype {name}: the float weights are {name} values; activations and arithmetic stay "
              f"float32 ({why}). --engine torch runs {name} arithmetic.", file=sys.stderr)


def require(name: str) -> Backend:
    if name not in BACKENDS:
        raise UserError(f"Unknown target {name!r}.", f"Use one of: {', '.join(BACKENDS)}.")
    backend = BACKENDS[name]
    reason = backend.unavailable_reason()
    if reason:
        raise UserError(f"Target {name!r} cannot run on this machine: {reason}", "Choose another --target.")
    return backend
