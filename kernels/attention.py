"""Attention math for the grouped-QKV path: rotary embedding, masks and SDPA over a static KV cache.

Conventions: B batch, T new tokens, S filled cache slots (S = start + T), nh query heads, nkv KV heads,
hd head dim. RoPE uses the rotate-half layout of transformers (pairs (j, j + hd/2)).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, heads, T, hd); cos, sin (B, T, hd) -> x rotated, same shape."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, T, hd)
    return x * cos + rotate_half(x) * sin


def attention_mask(key_valid: torch.Tensor, start: int, window: int | None = None) -> torch.Tensor:
    """Boolean mask (B, 1, T, S): query i (slot start+i) may see key slot j.

    key_valid (B, S) is 1 for real tokens and 0 for left padding, S = start + T. A query sees a key when the key
    is real, not in the future (j <= start + i) and, with a sliding `window`, start + i - j < window. A query
    always sees its own slot, so a padding row never has an empty softmax (its output is ignored).
    """
    S = key_valid.shape[1]
    q_slot = torch.arange(start, S).unsqueeze(1)          # (T, 1)
    k_slot = torch.arange(S).unsqueeze(0)                 # (1, S)
    allowed = k_slot <= q_slot                            # (T, S) causal
    if window is not None:
        allowed = allowed & (q_slot - k_slot < window)
    mask = allowed.unsqueeze(0) & key_valid.bool().unsqueeze(1)  # (B, T, S)
    mask = mask | (k_slot == q_slot).unsqueeze(0)
    return mask.unsqueeze(1)                                # (B, 1, T, S)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """q (B, nh, T, hd), k/v (B, nkv, S, hd), mask (B, 1, T, S) bool -> (B, nh, T, hd). GQA by head groups."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])
