"""Swap a loaded model's attention and MLP modules for the grouped ones (`--flash_attention`).

Module names come from the family table; after fusion each decoder layer has `<attn>.qkv_proj`,
`<attn>.o_proj`, `<mlp>.gate_up_proj`, `<mlp>.down_proj`.
"""
from __future__ import annotations

import torch
from torch import nn

from ..kernels.fused_modules import FusedGateUpMLP, GroupedQKVAttention
from .families import Family
from .module_paths import get_module


def layer_windows(config) -> list[int | None]:
    """Sliding-window length per layer (None = full attention), from `layer_types` or Mistral's sliding_window."""
    n = config.num_hidden_layers
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if types:
        return [window if t == "sliding_attention" else None for t in types[:n]]
    if getattr(config, "model_type", "") == "mistral" and window:
        return [window] * n
    return [None] * n


def linear_groups(layer: nn.Module, family: Family) -> dict[str, list[nn.Module]]:
    """A decoder layer's Linears by the group that shares one input, in execution order: "qkv" [q, k, v], "o" [o],
    "gate_up" [gate, up], "down" [down] (the grouping of the ONNX graph and of the native decoder)."""
    attn, mlp = getattr(layer, family.attn), getattr(layer, family.mlp)
    return {"qkv": [getattr(attn, family.q), getattr(attn, family.k), getattr(attn, family.v)],
            "o": [getattr(attn, family.o)],
            "gate_up": [getattr(mlp, family.gate), getattr(mlp, family.up)],
            "down": [getattr(mlp, family.down)]}


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


@torch.no_grad()
def rope_half_tables(model: nn.Module, config, family: Family) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin float32 (context limit, head_dim / 2) from the model's own rotary module (so Llama-3, yarn and the
    other scalings are included; rows past max_position_embeddings where the scaling allows them,
    runtime/rope_extension.py): row p is position p, column i the angle of rotate-half pair (i, i+hd/2)."""
    from .rope_extension import rope_tables

    hd = head_dim(config)
    cos, sin = rope_tables(get_module(model, family.rotary), config)                 # (n, hd) each
    return cos[:, : hd // 2].contiguous(), sin[:, : hd // 2].contiguous()


def fuse_model(model: nn.Module, config, family: Family) -> None:
    """In place: every layer's q/k/v -> qkv_proj and gate/up -> gate_up_proj, attention over a static cache."""
    windows = layer_windows(config)
    for i, layer in enumerate(get_module(model, family.layers)):
        attn = getattr(layer, family.attn)
        if isinstance(attn, GroupedQKVAttention):
            continue
        setattr(layer, family.attn, GroupedQKVAttention.from_unfused(
            attn, family.q, family.k, family.v, family.o, config.num_attention_heads,
            config.num_key_value_heads, head_dim(config), i, windows[i]))
        setattr(layer, family.mlp, FusedGateUpMLP.from_unfused(
            getattr(layer, family.mlp), family.gate, family.up, family.down))
