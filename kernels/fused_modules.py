"""Grouped projections: q/k/v as one Linear with attention over a static KV cache, gate/up as one Linear.

Weight layout of the grouped projections (rows = output features, as nn.Linear):
  qkv_proj.weight   (nh*hd + 2*nkv*hd, hidden) = cat(q_proj.weight, k_proj.weight, v_proj.weight), same for bias
  gate_up_proj.weight (2*inter, hidden)        = cat(gate_proj.weight, up_proj.weight)
Per-group quantization works along the input dimension of each output row, so quantizing the grouped weight
is identical to quantizing the parts separately; quantized parts (QLinearPerGrp) are grouped by row concatenation.
"""
from __future__ import annotations

import torch
from torch import nn

from .attention import apply_rope, sdpa
from .qlinear import QLinearPerGrp
from .static_cache import StaticKVCache


def _concat_linear(parts: list[nn.Module]) -> nn.Module:
    if isinstance(parts[0], QLinearPerGrp):
        return QLinearPerGrp.concat_rows(parts)
    out_features = sum(p.out_features for p in parts)
    has_bias = parts[0].bias is not None
    fused = nn.Linear(parts[0].in_features, out_features, bias=has_bias, device="meta")
    fused.weight = nn.Parameter(torch.cat([p.weight.detach() for p in parts], dim=0), requires_grad=False)
    if has_bias:
        fused.bias = nn.Parameter(torch.cat([p.bias.detach() for p in parts], dim=0), requires_grad=False)
    return fused


class GroupedQKVAttention(nn.Module):
    """Self-attention with one q/k/v projection, RoPE, GQA and a static KV cache."""

    def __init__(self, qkv_proj: nn.Module, o_proj: nn.Module, n_heads: int, n_kv_heads: int, head_dim: int,
                 layer_idx: int, window: int | None) -> None:
        super().__init__()
        self.qkv_proj = qkv_proj
        self.o_proj = o_proj
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.layer_idx = layer_idx
        self.window = window  # sliding-window length, or None for full attention

    @classmethod
    def from_unfused(cls, attn: nn.Module, q: str, k: str, v: str, o: str, n_heads: int, n_kv_heads: int,
                     head_dim: int, layer_idx: int, window: int | None) -> "GroupedQKVAttention":
        qkv = _concat_linear([getattr(attn, q), getattr(attn, k), getattr(attn, v)])
        return cls(qkv, getattr(attn, o), n_heads, n_kv_heads, head_dim, layer_idx, window)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor,
                cache: StaticKVCache, start: int) -> torch.Tensor:
        B, T, _ = x.shape
        qkv = self.qkv_proj(x)                                             # (B, T, (nh + 2 nkv) hd)
        q_size, kv_size = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)     # (B, nh, T, hd)
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k_all, v_all = cache.write(self.layer_idx, start, k, v)           # (B, nkv, S, hd)
        y = sdpa(q, k_all, v_all, mask)                                    # (B, nh, T, hd)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, q_size))

    def extra_repr(self) -> str:
        return f"heads={self.n_heads}, kv_heads={self.n_kv_heads}, head_dim={self.head_dim}, window={self.window}"


class FusedGateUpMLP(nn.Module):
    """SwiGLU MLP with one gate/up projection: down(act(gate(x)) * up(x))."""

    def __init__(self, gate_up_proj: nn.Module, down_proj: nn.Module, intermediate: int, act: nn.Module) -> None:
        super().__init__()
        self.gate_up_proj = gate_up_proj
        self.down_proj = down_proj
        self.intermediate = intermediate
        self.act = act

    @classmethod
    def from_unfused(cls, mlp: nn.Module, gate: str, up: str, down: str) -> "FusedGateUpMLP":
        g, u = getattr(mlp, gate), getattr(mlp, up)
        return cls(_concat_linear([g, u]), getattr(mlp, down), g.out_features, mlp.act_fn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).split(self.intermediate, dim=-1)  # (B, T, inter) each
        return self.down_proj(self.act(gate) * up)
