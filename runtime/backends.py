"""The one registry of execution targets (`--target NAME`).

A backend turns a loaded checkpoint into an engine (see runtime/engines.py for the interface). When a requested
backend cannot run here, `require` raises a UserError saying why; nothing ever falls back silently to another
target.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import UserError
from .engines import make_engine
from .model_loader import LoadedModel


@dataclass(frozen=True)
class EngineOptions:
    flash_attention: bool = False        # cpu: grouped QKV + static KV cache engine
    ep: str | None = None                # npu: execution-provider preference list (None = the default list)
    strict_ep: bool = False              # npu: a fallback to the CPU provider is an error
    onnx_dir: Path | None = None         # npu: export folder (None = the export cache)
    accuracy_level: int = 4              # npu: MatMulNBits accuracy_level of the export


@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    make_engine: Callable[[LoadedModel, EngineOptions], object]
    unavailable_reason: Callable[[], str | None] = lambda: None


def _cpu_engine(loaded: LoadedModel, options: EngineOptions):
    return make_engine(loaded, options.flash_attention)


def _npu_engine(loaded: LoadedModel, options: EngineOptions):
    from ..npu_backend.backend import make_npu_engine

    return make_npu_engine(loaded, options)


def _npu_unavailable() -> str | None:
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:
        return "ONNX Runtime is not installed (pip install onnxruntime, or your NPU vendor's build)."
    return None


BACKENDS: dict[str, Backend] = {
    "cpu": Backend("cpu", "PyTorch on the host CPU (transformers path, or grouped QKV + static KV cache with "
                          "--flash_attention); the reference", _cpu_engine),
    "npu": Backend("npu", "ONNX Runtime graph with MatMulNBits on the best execution provider of --ep (VitisAI, "
                          "QNN, OpenVINO, DML, then CPU)", _npu_engine, _npu_unavailable),
}


def require(name: str) -> Backend:
    if name not in BACKENDS:
        raise UserError(f"Unknown target {name!r}.", f"Use one of: {', '.join(BACKENDS)}.")
    backend = BACKENDS[name]
    reason = backend.unavailable_reason()
    if reason:
        raise UserError(f"Target {name!r} cannot run on this machine: {reason}", "Choose another --target.")
    return backend
