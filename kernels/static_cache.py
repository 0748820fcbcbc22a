"""A static (preallocated) KV cache: one allocation per (batch, max_seq_len), written in place while decoding.

Layout: `k` and `v` are float tensors of shape (n_layers, batch, n_kv_heads, max_seq_len, head_dim).
Slot t of the sequence axis holds the key/value of the t-th token fed to the model for that row (left
padding included, so all rows share slot indices). `length` is the number of filled slots.
"""
from __future__ import annotations

import torch

from .kv_quant import KVPrecision


class StaticKVCache:
    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, max_seq_len: int, head_dim: int,
                 dtype: torch.dtype) -> None:
        shape = (n_layers, batch, n_kv_heads, max_seq_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype)
        self.v = torch.zeros(shape, dtype=dtype)
        self.length = 0
        self.precision = KVPrecision()          # what a stored key / value becomes (kernels/kv_quant.py)

    @property
    def batch(self) -> int:
        return self.k.shape[1]

    @property
    def max_seq_len(self) -> int:
        return self.k.shape[3]

    @property
    def held_bytes(self) -> int:
        """Bytes of the storage (allocated whole by the constructor)."""
        return self.k.nbytes + self.v.nbytes

    def fits(self, batch: int, dtype: torch.dtype) -> bool:
        return self.batch == batch and self.k.dtype == dtype

    def reset(self) -> None:
        """Forget the contents; the storage is kept (no reallocation)."""
        self.length = 0

    def prepare(self, start: int, key_valid: torch.Tensor) -> None:
        """Every slot is allocated already (the paged cache hands out blocks here)."""

    def release_row(self, row: int) -> None:
        """A static row keeps its slots until the batch restarts."""

    def write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, n_kv, T, hd) at slots [start, start+T) and return views of slots [0, start+T)."""
        end = start + k.shape[2]
        if end > self.max_seq_len:
            raise ValueError(f"KV cache overflow: {end} slots needed, {self.max_seq_len} allocated")
        k, v = self.precision.stored(layer, k, v)
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]
