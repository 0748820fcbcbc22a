"""Bytes an engine holds in memory, for the benchmark's peak-RSS split into weights and KV cache.

Every engine exposes two properties built on these helpers:
* `weights_bytes`: the model tensors the engine keeps (packed or float weights, scales, the embedding table, norms;
  not RoPE tables or per-call scratch);
* `kv_bytes`: the storage its KV cache holds now (a contiguous cache: all of it; a paged one: the blocks in use or
  ever used since `start`, as documented per engine).
Each storage is counted once: tied weights, views and aliases of one tensor share a storage. Bytes are what the
engine holds in its address space: a memory-mapped tensor (the native engine's cached state) counts whole, though
only the pages read are resident.
"""
from __future__ import annotations

import itertools
from typing import Iterable

import torch
from torch import nn


def tensor_bytes(tensors: Iterable[torch.Tensor | None]) -> int:
    """Bytes of the distinct storages behind `tensors` (None entries and meta tensors are skipped)."""
    seen: set[int] = set()
    total = 0
    for t in tensors:
        if t is None or t.device.type == "meta":
            continue
        storage = t.untyped_storage()
        if storage.data_ptr() in seen:
            continue
        seen.add(storage.data_ptr())
        total += storage.nbytes()
    return total


def module_bytes(model: nn.Module) -> int:
    """Bytes of a module's parameters and buffers (quantized Linears: codes, scales, zero points)."""
    return tensor_bytes(itertools.chain(model.parameters(), model.buffers()))
