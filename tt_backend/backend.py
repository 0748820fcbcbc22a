"""The tt target's engine factory: precision config -> converted weights (cached) -> engine.

The engine is the CPU emulation (engine.py), or with `--tt_device` the same engine with its Linears on a
Tenstorrent card through ttnn (ttnn_device.py; untested here: no ttnn wheel for Python 3.11, no card).
"""
from __future__ import annotations

import sys

from ..errors import UserError
from ..runtime.model_loader import LoadedModel
from .engine import TTEngine
from .precision import PrecisionConfig, load_precision
from .ttnn_device import DeviceTTEngine, require_device
from .weights import ensure_weights


def make_tt_engine(loaded: LoadedModel, precision: "str | PrecisionConfig", flash_attention: bool = False,
                   device: bool = False) -> TTEngine:
    """`precision`: a --tt_precision value (name or JSON path) or a resolved config; `device`: --tt_device."""
    if flash_attention:
        raise UserError("--flash_attention selects the PyTorch engine of the cpu target; the tt target runs its "
                        "own attention with a KV cache in the config's format.", "Drop --flash_attention.")
    if device:
        require_device()
    config = precision if isinstance(precision, PrecisionConfig) else load_precision(
        precision, loaded.family.model_type, loaded.config.num_hidden_layers)
    weights = ensure_weights(loaded, config)
    engine = (DeviceTTEngine if device else TTEngine)(loaded, config, weights)
    where = "Linears on the Tenstorrent card (ttnn), the rest emulated" if device else \
        "CPU emulation of Tenstorrent numerics"
    print(f"[tt] {where}, precision {config.describe()}", file=sys.stderr)
    loaded.model.to("meta")          # release the PyTorch weights: the engine holds the device-side values
    return engine
