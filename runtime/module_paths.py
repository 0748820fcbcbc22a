"""Dotted module paths ("model.layers.3.self_attn.q_proj") -> modules, and replacement by path."""
from __future__ import annotations

from torch import nn


def get_module(root: nn.Module, dotted: str) -> nn.Module:
    for part in dotted.split("."):
        root = getattr(root, part)
    return root


def set_module(root: nn.Module, dotted: str, module: nn.Module) -> None:
    parent, _, name = dotted.rpartition(".")
    setattr(get_module(root, parent) if parent else root, name, module)
