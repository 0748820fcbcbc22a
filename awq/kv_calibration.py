"""Calibrated int8 KV cache scales (`run_awq quantize --calibrate_kv`): per layer, one scale per key channel and
one per value channel, from the float layer's keys and values over the calibration set.

Format (kernels/kv_quant.py): float32 (kv_heads * head_dim,) per layer and tensor, channel c of KV head h at
h * head_dim + c. An int8 cache divides each cached key / value by them channel-wise, then scales it per token and KV
head (kernels/kv_quant.py), so what counts is the channels' relative range: they equalize outlier channels.
* values: scale[c] = max |v_c| / 127 over every calibration token.
* keys are cached after RoPE, which rotates each pair of channels (c, c + head_dim / 2) by an angle that depends on
  the position; the pair's norm does not. So both channels of a pair get max sqrt(k_c^2 + k_{c+half}^2) / 127 over
  every calibration token (the keys before RoPE): the same scale on both channels of a pair keeps the division
  equivariant with RoPE's rotation, and no position, however far past the calibration length, rotates a key past
  its channel's range.
A channel that is zero on every token gets the smallest positive float32 (its codes are 0).
"""
from __future__ import annotations

import torch
from torch import nn

from ..kernels.kv_quant import KEY_SCALE, VALUE_SCALE
from ..runtime.families import Family
from ..runtime.module_paths import get_module


@torch.no_grad()
def kv_channel_scales(layer: nn.Module, family: Family, inputs: list[torch.Tensor], position_embeddings,
                      head_dim: int) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """Run the float `layer` over the calibration chunks (b, T, D) (not consumed) -> ({KEY_SCALE: (kv_heads *
    head_dim,), VALUE_SCALE: ...} float32, the layer's output chunks)."""
    key_max: list[torch.Tensor] = []
    value_max: list[torch.Tensor] = []

    def keys(_module, _args, out):                                                   # out (b, T, kv_heads * hd)
        k = out.detach().float().reshape(*out.shape[:-1], -1, head_dim)             # (b, T, kv_heads, hd)
        half = head_dim // 2
        pair = torch.sqrt(k[..., :half] ** 2 + k[..., half:] ** 2)                  # (b, T, kv_heads, hd / 2)
        m = pair.reshape(-1, *pair.shape[-2:]).amax(0)                               # (kv_heads, hd / 2)
        key_max.append(torch.cat([m, m], -1).flatten())                              # (kv_heads * hd,)

    def values(_module, _args, out):
        value_max.append(out.detach().float().abs().reshape(-1, out.shape[-1]).amax(0))

    attn = f"{family.attn}."
    handles = [get_module(layer, attn + family.k).register_forward_hook(keys),
               get_module(layer, attn + family.v).register_forward_hook(values)]
    try:
        outputs = [layer(chunk, position_embeddings=position_embeddings, attention_mask=None) for chunk in inputs]
    finally:
        for h in handles:
            h.remove()
    tiny = torch.finfo(torch.float32).tiny
    scale = {KEY_SCALE: torch.stack(key_max).amax(0) / 127, VALUE_SCALE: torch.stack(value_max).amax(0) / 127}
    return {k: v.clamp_min(tiny).contiguous() for k, v in scale.items()}, outputs
