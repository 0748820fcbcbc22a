"""`--target npu`: find or write the export folder of a loaded checkpoint, then run it with ONNX Runtime.

Folder: `--onnx_dir` when given (exported there when missing or empty; refused when stale or foreign), else the
export cache (`$EDGEAWQ_CACHE/onnx/<key>`, key = format version, source fingerprint and accuracy level; a stale
cache entry cannot be hit because its key would differ). After the session is created the PyTorch weights are
released: the engine holds only ONNX Runtime's copy.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..errors import UserError
from ..runtime.backends import EngineOptions, note_float32_arithmetic
from ..runtime.model_loader import LoadedModel
from .engine import OrtEngine
from .providers import choose_providers
from ..runtime.model_identity import fingerprint_of
from ..checkpoints.cache_integrity import DamagedArtefact
from ..checkpoints.output_path import check_output_folder
from .export_folder import RECORD, cache_folder, export_model, export_problem, read_record


def export_exists(loaded: LoadedModel, options: EngineOptions) -> bool:
    """True when running `loaded` needs no export: a current folder is in --onnx_dir or in the cache."""
    fingerprint = fingerprint_of(loaded)
    folder = options.onnx_dir or cache_folder(fingerprint, options.accuracy_level)
    try:
        read_record(Path(folder), fingerprint, options.accuracy_level)
    except UserError:
        return False
    return True


def ensure_export(loaded: LoadedModel, onnx_dir: Path | None, accuracy_level: int) -> Path:
    fingerprint = fingerprint_of(loaded)
    folder = Path(onnx_dir) if onnx_dir is not None else cache_folder(fingerprint, accuracy_level)
    if (folder / RECORD).exists():
        try:
            read_record(folder, fingerprint, accuracy_level)
            return folder
        except DamagedArtefact as damaged:                   # our own export, damaged: write it again
            print(f"[onnx] {damaged.problem} Exporting it again.", file=sys.stderr)
            export_model(loaded, folder, accuracy_level, fingerprint, wait=onnx_dir is None)
            return folder
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        read_record(folder, fingerprint, accuracy_level)     # raises: not an export of this tool
    if onnx_dir is not None:                                 # never the current folder, a home, the source...
        check_output_folder(folder, "export", [loaded.source], False, export_problem, flag="--onnx_dir")
    print(f"[onnx] exporting {loaded.source} to {folder} (accuracy_level {accuracy_level})", file=sys.stderr)
    export_model(loaded, folder, accuracy_level, fingerprint, wait=onnx_dir is None)
    return folder


def onnx_problem(loaded: LoadedModel) -> str | None:
    """Why the ONNX Runtime graph cannot hold this model's quantized Linears (MatMulNBits block sizes; W8A8
    Linears take MatMulInteger, which has none), or None."""
    from ..kernels.qlinear import QLinearPerGrp
    from .matmulnbits import block_size_problem

    for name, module in loaded.model.named_modules():
        if isinstance(module, QLinearPerGrp) and module.act_quant is None:     # W8A8 Linears become MatMulInteger
            problem = block_size_problem(module.spec.group(module.in_features), module.in_features, name)
            if problem:
                return problem
    return None


def make_npu_engine(loaded: LoadedModel, options: EngineOptions, label: str = "npu") -> OrtEngine:
    """`label`: the target name in messages (the cpu target runs the same graph on the CPU provider)."""
    problem = onnx_problem(loaded)
    if problem:
        asked = "--target cpu --engine onnx" if label == "cpu" else f"--target {label}"
        other = ("--engine auto picks an engine that can run it" if label == "cpu" else
                 "--target cpu runs it (--engine auto)")
        raise UserError(f"{asked} cannot run this model: {problem}.",
                        f"Quantize with --group_size 32, 64, 128 or 256, or run it elsewhere: {other}.")
    if options.flash_attention:
        raise UserError("--flash_attention selects the PyTorch engine of the cpu target; the npu target always runs "
                        "grouped QKV and its own attention with a KV cache.", "Drop --flash_attention.")
    choose_providers(options.ep, options.strict_ep)          # refuse a bad --ep before spending time on an export
    note_float32_arithmetic(label, loaded, "the export is one float32 graph for every execution provider; the "
                            "embedding table is held in the dtype")
    folder = ensure_export(loaded, options.onnx_dir, options.accuracy_level)
    engine = OrtEngine(folder, options.ep, options.strict_ep)
    print(f"[{label}] execution provider: {engine.provider} (session providers: {', '.join(engine.providers)})",
          file=sys.stderr)
    loaded.model.to("meta")          # release the PyTorch weights: ONNX Runtime holds its own
    return engine


def make_engine(loaded: LoadedModel, options: EngineOptions) -> OrtEngine:
    """The registry's entry (runtime/backends.py)."""
    return make_npu_engine(loaded, options)
