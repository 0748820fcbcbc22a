"""`--target cpu`: which engine runs a loaded checkpoint on the host CPU, and building it.

`--engine auto` -> native for quantized checkpoints with the reference numerics when the native kernels can run
them (the fast path), else the ONNX Runtime graph on the CPU provider when it is installed and MatMulNBits can hold
every group size, else PyTorch (auto always picks an engine that runs the checkpoint); `--flash_attention` and
`--act_dtype aie` name the PyTorch engine; float checkpoints run PyTorch.
"""
from __future__ import annotations

import importlib.util
from dataclasses import replace

from ..errors import UserError
from ..kernels.kv_quant import KVPrecision
from ..runtime.backends import (EngineOptions, kv_paging, note_float32_arithmetic, refuse_kv_options,
                               use_kv_channels)
from ..runtime.engines import make_engine as make_torch_engine
from ..runtime.model_loader import LoadedModel
from ..runtime.quantized_model import kv_channel_scales

CPU_ENGINES = ("auto", "native", "onnx", "torch")


def _onnxruntime_missing() -> bool:
    return importlib.util.find_spec("onnxruntime") is None


def cpu_engine_choice(loaded: LoadedModel, options: EngineOptions) -> str:
    """The engine `options.engine` resolves to for `loaded`: native, onnx or torch (see the module docstring)."""
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
    if _onnxruntime_missing():
        return "torch"
    from ..npu_backend.backend import onnx_problem

    return "torch" if onnx_problem(loaded) else "onnx"


def make_engine(loaded: LoadedModel, options: EngineOptions):
    choice = cpu_engine_choice(loaded, options)
    if choice == "native":
        from .native_engine import NativeEngine
        from .native_state import native_state

        note_float32_arithmetic("native", loaded, "its kernels are float32 with int8 activation codes; the "
                                "embedding table is held in the dtype")
        channels = use_kv_channels(options, bool(kv_channel_scales(loaded.model, loaded.family)), loaded.source)
        return NativeEngine(*native_state(loaded), None, *kv_paging(options), options.kv_dtype, channels)
    if choice == "onnx":
        from ..npu_backend.backend import make_npu_engine

        refuse_kv_options("--engine onnx", options)
        return make_npu_engine(loaded, replace(options, ep="CPU", strict_ep=False), label="cpu")
    if not options.flash_attention:
        refuse_kv_options("the transformers engine (--engine torch without --flash_attention)", options)
        return make_torch_engine(loaded, False)
    channels = kv_channel_scales(loaded.model, loaded.family)
    use = use_kv_channels(options, bool(channels), loaded.source)
    return make_torch_engine(loaded, True, *kv_paging(options),
                             KVPrecision(options.kv_dtype, channels if use else None))
