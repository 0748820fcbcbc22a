"""Held-memory counting: each storage once (tied weights, views), None and meta tensors skipped, buffers counted."""
from __future__ import annotations

import torch
from torch import nn

from edgeawq.runtime.held_memory import module_bytes, tensor_bytes


def test_a_storage_is_counted_once_whatever_views_of_it_are_given():
    a = torch.zeros(10, 4)                                   # 160 bytes
    b = torch.zeros(3, dtype=torch.float16)                  # 6 bytes
    assert tensor_bytes([a, a[2:], a.t(), b, None]) == 160 + 6
    assert tensor_bytes([torch.zeros(5, device="meta"), b]) == 6
    assert tensor_bytes([]) == 0


def test_module_bytes_counts_parameters_and_buffers_and_a_tied_weight_once():
    model = nn.Sequential(nn.Embedding(7, 4), nn.Linear(4, 7, bias=False))
    model[1].weight = model[0].weight                         # tied: one (7, 4) float32 storage
    model.register_buffer("codes", torch.zeros(9, dtype=torch.uint8))
    assert module_bytes(model) == 7 * 4 * 4 + 9
