"""KV cache precision (`--kv_dtype fp32|bf16|fp16|int8`): what a stored key or value becomes, in PyTorch.

The native engine stores the codes (cpu_backend/native/decoder.cpp); the reference engine stores these
round-tripped values in its float cache, so both attend over the same numbers.

* fp32: unchanged.  bf16 / fp16: rounded to the type (nearest even), back to float.
* int8, per (token, KV head), the default: s = max|x| / 127 over the head's head_dim values, q = round-half-even
  (x * (1 / s)) (0 when s is 0), x_hat = q * s.
* int8 with calibrated per-channel scales c (kv_heads * head_dim,) of the layer (`--calibrate_kv`): the channels are
  divided by c first, then scaled per (token, KV head) as above: y = x / c, s = max|y| / 127, q = round-half-even
  (y * (1 / s)), x_hat = q * s * c. (c equalizes the channels' ranges, so an outlier channel does not coarsen the
  others' step; a static scale alone, x_hat = clamp(round(x / c)) * c, measured worse than per token.)

Calibrated scales are checkpoint tensors `<layers>.{i}.<attn>.k_channel_scale` and `.v_channel_scale`, float32
(kv_heads * head_dim,), channel c of KV head h at h * head_dim + c (how awq/kv_calibration.py chooses them is
documented there); quantization_config["kv_cache"] records the calibration.
"""
from __future__ import annotations

import torch

KV_DTYPES = ("fp32", "bf16", "fp16", "int8")
KEY_SCALE, VALUE_SCALE = "k_channel_scale", "v_channel_scale"   # calibrated scales, under a layer's attention module
STORAGE = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.int8}


def kv_round_trip(x: torch.Tensor, kv_dtype: str, channel: torch.Tensor | None = None) -> torch.Tensor:
    """x (B, kv_heads, T, head_dim) -> the values an `kv_dtype` cache holds, in x's dtype."""
    if kv_dtype == "fp32":
        return x
    if kv_dtype in ("bf16", "fp16"):
        return x.float().to(STORAGE[kv_dtype]).to(x.dtype)
    if kv_dtype != "int8":
        raise ValueError(f"unknown KV dtype {kv_dtype!r}")
    xf = x.float()
    c = None if channel is None else channel.float().view(1, x.shape[1], 1, x.shape[3])   # (1, kv_heads, 1, head_dim)
    y = xf if c is None else xf / c
    s = y.abs().amax(-1, keepdim=True) / 127                                      # (B, kv_heads, T, 1)
    inv = torch.where(s > 0, 1 / s, torch.zeros_like(s))
    q = torch.round(y * inv) * s
    return (q if c is None else q * c).to(x.dtype)


def kv_bytes_per_token(kv_dtype: str, layers: int, kv_heads: int, head_dim: int) -> int:
    """Bytes the cache holds per token: keys and values of every layer, plus int8's two slot scales per head."""
    elem = STORAGE[kv_dtype].itemsize
    scales = 2 * layers * kv_heads * 4 if kv_dtype == "int8" else 0
    return 2 * layers * kv_heads * head_dim * elem + scales


class KVPrecision:
    """A cache's precision: `kv_dtype`, and per layer optional calibrated int8 channel scales (keys, values)."""

    def __init__(self, kv_dtype: str = "fp32", channels: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None):
        if kv_dtype not in KV_DTYPES:
            raise ValueError(f"unknown KV dtype {kv_dtype!r}")
        self.kv_dtype, self.channels = kv_dtype, channels or {}

    def stored(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v (B, kv_heads, T, head_dim) -> what the cache holds for them (kv_round_trip)."""
        kc, vc = self.channels.get(layer, (None, None))
        return kv_round_trip(k, self.kv_dtype, kc), kv_round_trip(v, self.kv_dtype, vc)
