"""The one registry of execution targets (`--target NAME`).

A backend turns a loaded checkpoint into an engine (see runtime/engines.py). When a requested backend cannot
run here, `require` raises a UserError saying why; nothing ever falls back silently to another target.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import UserError
from .engines import make_engine
from .model_loader import LoadedModel


@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    make_engine: Callable[[LoadedModel, bool], object]   # (loaded model, flash_attention) -> engine
    unavailable_reason: Callable[[], str | None] = lambda: None


BACKENDS: dict[str, Backend] = {
    "cpu": Backend("cpu", "PyTorch on the host CPU (transformers path, or grouped QKV + static KV cache with "
                          "--flash_attention)", make_engine),
}


def require(name: str) -> Backend:
    if name not in BACKENDS:
        raise UserError(f"Unknown target {name!r}.", f"Use one of: {', '.join(BACKENDS)}.")
    backend = BACKENDS[name]
    reason = backend.unavailable_reason()
    if reason:
        raise UserError(f"Target {name!r} cannot run on this machine: {reason}", "Choose another --target.")
    return backend
