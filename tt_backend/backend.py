"""The tt target's engine factory: precision config -> converted weights (cached) -> engine.

The engine is the CPU emulation (engine.py), or the same engine with its Linears on a Tenstorrent card through
ttnn (ttnn_device.py; untested here: no ttnn wheel for Python 3.11, no card): `--tt_device auto` uses the card when
ttnn sees one, `on` requires it, `off` always emulates.
"""
from __future__ import annotations

import sys

import torch

from ..errors import UserError
from ..runtime.model_loader import LoadedModel
from ..runtime.memory import available_bytes
from ..runtime.module_paths import get_module
from .engine import TTEngine, weights_needing_hi
from .precision import PrecisionConfig, load_precision
from .ttnn_device import DeviceTTEngine, require_device, unavailable_reason
from .weights import ensure_weights, linear_modules


def emulation_bytes(loaded: LoadedModel, config: PrecisionConfig) -> int:
    """Resident bytes of the emulation's weights: 4 per weight (fp32 SrcA values), 4 more for the weights read at
    LoFi/HiFi3 (their 5-bit part), 4 per embedding value."""
    coarse = weights_needing_hi(config)
    total = 4 * get_module(loaded.model, loaded.family.embed).weight.numel()
    for name, modules in linear_modules(loaded):
        total += (8 if name in coarse else 4) * sum(mod.in_features * mod.out_features for mod in modules)
    return total


def check_memory(loaded: LoadedModel, config: PrecisionConfig) -> None:
    need, free = emulation_bytes(loaded, config), available_bytes()
    if free is not None and need > free:
        raise UserError(f"The tt emulation of this model needs about {need / 1e9:.1f} GB for its weights (fp32 "
                        f"operands, 4-8 bytes per weight) and this machine has {free / 1e9:.1f} GB available.",
                        "Use a smaller model, or a machine with more memory; the weight cache itself is stored in "
                        "block-float (about 0.6-1.1 bytes per weight).")


def check_tt_numerics(loaded: LoadedModel, target: str = "--target tt") -> None:
    """Refuse what Tenstorrent numerics cannot represent: W8A8 checkpoints (int8 activations: ttnn multiplies
    block-float / bf16 tiles and has no int8 x int8 matmul) and float weights loaded as fp16 (ttnn has no fp16 data
    type: tensors are bf16, fp32 or block-float, so fp16 values would be rounded again to bf16). Either would
    silently be a different model's numerics."""
    layout = loaded.quant
    if layout is not None and layout.act_quant is not None:
        raise UserError(f"{target} cannot run {loaded.source}: it is a W8A8 checkpoint (int8 activations, "
                        f"{layout.act_quant}), and Tenstorrent matmuls take block-float or bf16 activations.",
                        "Run it with --target cpu or --target npu, or give --target tt a weight-only checkpoint "
                        "(e.g. --algorithm awq or --w_bit 8 --algorithm pergrp).")
    if loaded.dtype == torch.float16:
        raise UserError(f"{target} cannot run --dtype fp16: Tenstorrent tensors are bf16, fp32 or block-float (ttnn "
                        "has no fp16 data type), so fp16 weights would be rounded a second time, to bf16.",
                        "Use --dtype fp32 (the precision config then sets each tensor's format) or --dtype bf16, or "
                        "run fp16 on --target cpu --engine torch.")


def make_tt_engine(loaded: LoadedModel, precision: "str | PrecisionConfig", flash_attention: bool = False,
                   device: str = "off") -> TTEngine:
    """`precision`: a --tt_precision value (name or JSON path) or a resolved config; `device`: --tt_device."""
    check_tt_numerics(loaded)
    if flash_attention:
        raise UserError("--flash_attention selects the PyTorch engine of the cpu target; the tt target runs its "
                        "own attention with a KV cache in the config's format.", "Drop --flash_attention.")
    if device not in ("auto", "on", "off"):
        raise UserError(f"--tt_device {device!r} is not auto, on or off.", "Use one of those.")
    if device == "on":
        require_device()
    on_card = device == "on" or (device == "auto" and unavailable_reason() is None)
    config = precision if isinstance(precision, PrecisionConfig) else load_precision(
        precision, loaded.family.model_type, loaded.config.num_hidden_layers)
    check_memory(loaded, config)
    weights = ensure_weights(loaded, config)
    engine = (DeviceTTEngine if on_card else TTEngine)(loaded, config, weights)
    where = "Linears on the Tenstorrent card (ttnn), the rest emulated" if on_card else \
        "CPU emulation of Tenstorrent numerics"
    print(f"[tt] {where}, precision {config.describe()}", file=sys.stderr)
    loaded.model.to("meta")          # release the PyTorch weights: the engine holds the device-side values
    return engine


def make_engine(loaded: LoadedModel, options) -> TTEngine:
    """The registry's entry (runtime/backends.py): the tt engine for `options` (an EngineOptions)."""
    return make_tt_engine(loaded, options.tt_precision, options.flash_attention, options.tt_device)
