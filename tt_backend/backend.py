"""The tt target's engine factory: precision config -> converted weights (cached) -> the CPU emulation engine.

Execution on a Tenstorrent card through ttnn is not part of this backend: ttnn has no wheel for this project's
Python (3.11) and no card is available to test on; `--target tt` always runs the emulation (engine.py) and says so.
"""
from __future__ import annotations

import sys

from ..errors import UserError
from ..runtime.model_loader import LoadedModel
from .engine import TTEngine
from .precision import PrecisionConfig, load_precision
from .weights import ensure_weights


def make_tt_engine(loaded: LoadedModel, precision: "str | PrecisionConfig",
                   flash_attention: bool = False) -> TTEngine:
    """`precision`: a --tt_precision value (name or JSON path) or a resolved config."""
    if flash_attention:
        raise UserError("--flash_attention selects the PyTorch engine of the cpu target; the tt target runs its "
                        "own attention with a KV cache in the config's format.", "Drop --flash_attention.")
    config = precision if isinstance(precision, PrecisionConfig) else load_precision(
        precision, loaded.family.model_type, loaded.config.num_hidden_layers)
    weights = ensure_weights(loaded, config)
    engine = TTEngine(loaded, config, weights)
    print(f"[tt] CPU emulation of Tenstorrent numerics, precision {config.describe()}", file=sys.stderr)
    loaded.model.to("meta")          # release the PyTorch weights: the engine holds the device-side values
    return engine
