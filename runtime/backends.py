"""The one registry of execution targets (`--target NAME`).

A backend turns a loaded checkpoint into an engine (see runtime/engines.py for the interface). When a requested
backend cannot run here, `require` raises a UserError saying why; nothing ever falls back silently to another
target.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from ..errors import UserError
from .engines import make_engine
from .model_loader import LoadedModel


CPU_ENGINES = ("auto", "native", "onnx", "torch")


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


@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    make_engine: Callable[[LoadedModel, EngineOptions], object]
    unavailable_reason: Callable[[], str | None] = lambda: None


def cpu_engine_choice(loaded: LoadedModel, options: EngineOptions) -> str:
    """auto -> native for quantized checkpoints with the reference numerics when the native kernels can run them
    (the fast path), else onnx, else torch. --flash_attention or --act_dtype aie name the PyTorch engine."""
    if options.engine not in CPU_ENGINES:
        raise UserError(f"Unknown --engine {options.engine!r}.", f"Use one of: {', '.join(CPU_ENGINES)}.")
    aie = any(getattr(m, "numerics", "") == "aie" for m in loaded.model.modules())
    if options.engine in ("onnx", "native"):
        if options.flash_attention or aie:
            raise UserError(f"--engine {options.engine} runs its own graph; --flash_attention and --act_dtype aie "
                            "select PyTorch engines.", "Drop one of them (or use --engine torch).")
        if options.engine == "native":
            from .native_state import native_problem

            problem = native_problem(loaded)
            if problem:
                raise UserError(f"--engine native cannot run this model: {problem}.",
                                "Use --engine onnx or --engine torch (or --engine auto, which picks one).")
        return options.engine
    if options.engine == "torch" or options.flash_attention or aie or loaded.quant is None:
        return "torch"
    from .native_state import native_problem

    if native_problem(loaded) is None:
        return "native"
    return "onnx" if _npu_unavailable() is None else "torch"


def _cpu_engine(loaded: LoadedModel, options: EngineOptions):
    choice = cpu_engine_choice(loaded, options)
    if choice == "native":
        from .native_engine import NativeEngine
        from .native_state import native_state

        return NativeEngine(*native_state(loaded))
    if choice == "onnx":
        from ..npu_backend.backend import make_npu_engine

        return make_npu_engine(loaded, replace(options, ep="CPU", strict_ep=False), label="cpu")
    return make_engine(loaded, options.flash_attention)


def _npu_engine(loaded: LoadedModel, options: EngineOptions):
    from ..npu_backend.backend import make_npu_engine

    return make_npu_engine(loaded, options)


def _tt_engine(loaded: LoadedModel, options: EngineOptions):
    from ..tt_backend.backend import make_tt_engine

    return make_tt_engine(loaded, options.tt_precision, options.flash_attention, options.tt_device)


def _npu_unavailable() -> str | None:
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:
        return "ONNX Runtime is not installed (pip install onnxruntime, or your NPU vendor's build)."
    return None


BACKENDS: dict[str, Backend] = {
    "cpu": Backend("cpu", "the host CPU: quantized checkpoints run the exported ONNX Runtime graph (MatMulNBits) on "
                          "the CPU provider (--engine onnx, the default for them); --engine torch runs PyTorch (the "
                          "reference; grouped QKV + static KV cache with --flash_attention)", _cpu_engine),
    "npu": Backend("npu", "ONNX Runtime graph with MatMulNBits on the best execution provider of --ep (VitisAI, "
                          "QNN, OpenVINO, DML, then CPU)", _npu_engine, _npu_unavailable),
    "tt": Backend("tt", "Tenstorrent numerics emulated on the CPU: block-float weights and KV cache, math fidelity, "
                        "bf16 activations, per --tt_precision", _tt_engine),
}


def require(name: str) -> Backend:
    if name not in BACKENDS:
        raise UserError(f"Unknown target {name!r}.", f"Use one of: {', '.join(BACKENDS)}.")
    backend = BACKENDS[name]
    reason = backend.unavailable_reason()
    if reason:
        raise UserError(f"Target {name!r} cannot run on this machine: {reason}", "Choose another --target.")
    return backend
