"""The cpu target's native engine (`--engine native`): the whole decoder in the project's own C++ kernels
(kernels/native/decoder.cpp), same interface as runtime/engines.py.

Numerics: every decoder Linear (grouped q/k/v, o, grouped gate/up, down; and a quantized lm_head) multiplies
int8 activations (per weight group: scale max|x|/127, round half to even) with the checkpoint's own codes,
scales and zero points, exact in int32 per group, scaled in fp32: the int8 path ONNX Runtime's MatMulNBits takes
at accuracy_level 4. RMSNorm, RoPE (the model's own cos/sin tables), attention (fp32 KV cache, GQA, causal,
sliding window), SiLU and residuals in fp32. A float lm_head runs as a PyTorch fp32 matmul.

Layout handled as by the ONNX Runtime engine: the caller's left-padded rows are compacted (each row's real
tokens only), a token's cache slot and RoPE position are the count of its row's earlier real tokens, logits come
back right-aligned (padding positions of full-sequence logits are zero).

After packing, the PyTorch weights of the decoder are released (the engine holds only the native layout plus
the embedding table and a float lm_head).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..kernels import native_build
from ..kernels.formats import native_format, unpack
from ..kernels.native_pack import layout_problem, pack_native
from ..kernels.qlinear import QLinearPerGrp
from .fusion import head_dim, layer_windows, rope_half_tables
from .model_loader import LoadedModel
from .module_paths import get_module

SUPPORTED_ACTIVATIONS = ("silu",)


def _groups(loaded: LoadedModel) -> list[tuple[str, list[nn.Module]]]:
    """(name, parts) of every grouped Linear of every layer, in execution order."""
    f = loaded.family
    out = []
    for i, layer in enumerate(get_module(loaded.model, f.layers)):
        attn, mlp = getattr(layer, f.attn), getattr(layer, f.mlp)
        out += [(f"layers.{i}.qkv", [getattr(attn, f.q), getattr(attn, f.k), getattr(attn, f.v)]),
                (f"layers.{i}.o", [getattr(attn, f.o)]),
                (f"layers.{i}.gate_up", [getattr(mlp, f.gate), getattr(mlp, f.up)]),
                (f"layers.{i}.down", [getattr(mlp, f.down)])]
    return out


def native_problem(loaded: LoadedModel) -> str | None:
    """Why the native engine cannot run this model, or None."""
    reason = native_build.unavailable_reason()
    if reason:
        return reason
    c = loaded.config
    if getattr(c, "hidden_act", "silu") not in SUPPORTED_ACTIVATIONS:
        return f"hidden_act {c.hidden_act!r} (the native decoder implements SiLU)"
    for name, parts in _groups(loaded):
        if not all(isinstance(p, QLinearPerGrp) for p in parts):
            return f"{name} is not quantized (the native decoder runs quantized decoder Linears only)"
        if len({(p.spec.bits, p.spec.group(p.in_features)) for p in parts}) != 1:
            return f"{name} groups Linears with different bits or group sizes"
        p = parts[0]
        problem = layout_problem(p.out_features, p.in_features, p.spec.group(p.in_features), p.spec.bits, p.scales)
        if problem:
            return f"{name} has {problem}"
        if name.endswith((".o", ".gate_up", ".down")) and any(q.bias is not None for q in parts):
            return f"{name} has a bias (the native decoder adds biases to q/k/v only)"
    head = get_module(loaded.model, loaded.family.lm_head)
    if isinstance(head, QLinearPerGrp):
        problem = layout_problem(head.out_features, head.in_features, head.spec.group(head.in_features),
                                 head.spec.bits, head.scales)
        if problem:
            return f"lm_head has {problem}"
    return None


def _pack_group(parts: list[QLinearPerGrp]):
    """-> (lines, meta, N, K, group, bias float32 or None) of the parts stacked along N."""
    bits = parts[0].spec.bits
    codes = torch.cat([unpack(p.packed, native_format(bits)) for p in parts])             # (N, K)
    w = pack_native(codes, torch.cat([p.scales for p in parts]), torch.cat([p.zeros for p in parts]))
    bias = None
    if any(p.bias is not None for p in parts):
        bias = torch.cat([p.bias.detach().float() if p.bias is not None else torch.zeros(p.out_features)
                          for p in parts])
    return w, bias


class NativeEngine:
    def __init__(self, loaded: LoadedModel, threads: int | None = None) -> None:
        ext = native_build.load()
        self.isa = ext.isa()
        self.name = f"native/{self.isa}"
        c, f, m = loaded.config, loaded.family, loaded.model
        self.threads = threads or torch.get_num_threads()
        self.layers = c.num_hidden_layers
        self.kv_heads, self.head_dim = c.num_key_value_heads, head_dim(c)
        cos, sin = rope_half_tables(m, c, f)
        self.max_positions = cos.shape[0]
        layers = get_module(m, f.layers)
        first = layers[0]
        eps = float(getattr(getattr(first, f.input_norm), "variance_epsilon", 1e-6))
        ffn = getattr(getattr(first, f.mlp), f.gate).out_features
        self.decoder = ext.Decoder(c.hidden_size, c.num_attention_heads, self.kv_heads, self.head_dim, ffn, eps,
                                   cos, sin, self.threads)
        self.weight_bytes = 0
        windows = layer_windows(c)
        groups = _groups(loaded)
        for i, layer in enumerate(layers):
            packed = []
            for _, parts in groups[4 * i: 4 * i + 4]:
                w, bias = _pack_group(parts)
                self.weight_bytes += w.nbytes
                packed.append((w, bias))
            (qkv, qkv_bias), (o, _), (gu, _), (down, _) = packed
            self.decoder.add_layer(getattr(layer, f.input_norm).weight.detach().float(),
                                   getattr(layer, f.post_attn_norm).weight.detach().float(),
                                   [qkv.lines, qkv.meta], qkv_bias, [o.lines, o.meta], [gu.lines, gu.meta],
                                   [down.lines, down.meta], qkv.group, o.group, gu.group, down.group,
                                   windows[i] or 0)
            layer.to("meta")                                  # the native copy replaces this layer's weights
        norm = get_module(m, f.final_norm)
        self.norm_weight = norm.weight.detach().float()
        self.norm_eps = float(getattr(norm, "variance_epsilon", eps))
        self.embed = get_module(m, f.embed).weight.detach()                      # (V, D), the model's dtype
        head = get_module(m, f.lm_head)
        if isinstance(head, QLinearPerGrp):
            w, bias = _pack_group([head])
            self.weight_bytes += w.nbytes
            self.head = ext.Linear(w.lines, w.meta, bias, w.N, w.K, w.group, self.threads).forward
            self.vocab = w.N
        else:
            weight = head.weight.detach().float()                                # (V, D)
            bias = None if head.bias is None else head.bias.detach().float()
            self.weight_bytes += weight.numel() * 4
            self.head = lambda x: torch.nn.functional.linear(x, weight, bias)
            self.vocab = weight.shape[0]
        m.to("meta")                                          # the engine holds what it needs
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.lengths = np.zeros(0, np.int64)

    @property
    def weight_bytes_per_token(self) -> int:
        """Bytes of weights one decode step reads: every packed Linear (codes + scale/zero bytes) or the fp32
        lm_head, plus one embedding row."""
        return self.weight_bytes + self.embed.shape[1] * self.embed.element_size()

    def start(self, batch: int, max_seq_len: int) -> None:
        if max_seq_len > self.max_positions:
            raise ValueError(f"{max_seq_len} cache slots exceed the model's {self.max_positions} positions")
        shape = (batch, self.kv_heads, max_seq_len, self.head_dim)
        if not self.keys or tuple(self.keys[0].shape) != shape:
            self.keys = [torch.zeros(shape) for _ in range(self.layers)]
            self.values = [torch.zeros(shape) for _ in range(self.layers)]
            self.decoder.set_cache(self.keys, self.values)
        self.lengths = np.zeros(batch, np.int64)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor,
                last_only: bool = True) -> torch.Tensor:
        B, T = input_ids.shape
        new = attention_mask[:, -T:].sum(1).numpy()                               # (B,) real tokens per row
        if int((self.lengths + new).max()) > self.keys[0].shape[2]:
            raise ValueError(f"KV cache of {self.keys[0].shape[2]} slots is full")
        ids = torch.cat([input_ids[b, T - new[b]:] for b in range(B)])            # (M,) compacted
        rows = torch.from_numpy(np.repeat(np.arange(B), new))                     # (M,)
        slots = torch.from_numpy(np.concatenate([self.lengths[b] + np.arange(new[b]) for b in range(B)]))
        self.lengths = self.lengths + new
        h = self.embed[ids].float()                                                # (M, D)
        self.decoder.forward(h, rows, slots)
        ends = np.cumsum(new)                                                      # row b's tokens: [end-new, end)
        if last_only:
            x = h[torch.from_numpy(np.maximum(ends - 1, 0))]                       # (B, D)
            logits = self._logits(x)                                               # (B, V)
            if (new == 0).any():
                logits[torch.from_numpy(new == 0)] = 0.0
            return logits[:, None]                                                 # (B, 1, V)
        logits = self._logits(h)                                                   # (M, V)
        out = torch.zeros(B, T, self.vocab)
        for b in range(B):
            out[b, T - new[b]:] = logits[ends[b] - new[b]: ends[b]]
        return out                                                                 # (B, T, V)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """x float32 (n, D) -> final RMSNorm -> lm_head -> (n, V)."""
        var = x.pow(2).mean(-1, keepdim=True)
        return self.head((x * torch.rsqrt(var + self.norm_eps) * self.norm_weight).contiguous())
