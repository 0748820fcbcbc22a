"""The cpu target's native engine (`--engine native`): the whole decoder in the project's own C++ kernels
(cpu_backend/native/decoder.cpp), same interface as runtime/engines.py.

Numerics: every decoder Linear (grouped q/k/v, o, grouped gate/up, down; and a quantized lm_head) multiplies
int8 activations (per weight group: scale max|x|/127, round half to even) with the checkpoint's own codes,
scales and zero points, exact in int32 per group, scaled in fp32: the int8 path ONNX Runtime's MatMulNBits takes
at accuracy_level 4. RMSNorm, RoPE (the model's own cos/sin tables), attention (fp32 KV cache, GQA, causal,
sliding window), SiLU and residuals in fp32. A float lm_head runs as a PyTorch fp32 matmul.

Layout handled as by the ONNX Runtime engine: the caller's left-padded rows are compacted (each row's real
tokens only), a token's cache slot and RoPE position are the count of its row's earlier real tokens, logits come
back right-aligned (padding positions of full-sequence logits are zero).

The weights come from a native state (cpu_backend/native_state.py: packed once, then cached); the PyTorch model is
released, so the engine holds one copy: the native layout plus the embedding table and a float lm_head.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from ..runtime.chunked_prefill import DEFAULT_PREFILL_CHUNK
from ..runtime.held_memory import tensor_bytes
from ..errors import UserError
from ..kernels.kv_quant import KEY_SCALE, VALUE_SCALE
from . import native_build
from .kv_cache import ContiguousKV, PagedKV


LINEAR_GROUPS = ("qkv", "o", "gate_up", "down")


def set_static_act_scales(decoder, i: int, scales: dict[str, torch.Tensor | None]) -> None:
    """Layer i's static int8 input scales (per-tensor W8A8 checkpoints): {group: float32 (1,) or None}; a layer
    with none keeps the dynamic per-token (per-group) scales."""
    if any(s is not None for s in scales.values()):
        decoder.set_act_scales(i, *(0.0 if scales[k] is None else float(scales[k]) for k in LINEAR_GROUPS))


class NativeEngine:
    prefill_chunk = DEFAULT_PREFILL_CHUNK["native"]
    # Rows are independent sequences: each call may feed any row any number of tokens (or none), a released row
    # starts a new sequence at position 0, and a row's results depend only on its own tokens. serving/ needs this.
    continuous_batching = True

    def __init__(self, tensors: dict[str, torch.Tensor], spec: dict, threads: int | None = None,
                 kv_block_size: int | None = None, kv_max_blocks: int | None = None, kv_dtype: str = "fp32",
                 kv_channels: bool = False) -> None:
        """tensors, spec: a native state (cpu_backend/native_state.py). kv_block_size: a paged KV cache of blocks of
        that many tokens, at most kv_max_blocks of them (cpu_backend/kv_cache.py); None: a contiguous cache.
        kv_dtype: the cache's element type (fp32, bf16, fp16, int8; kernels/kv_quant.py); kv_channels: an int8
        cache takes the state's calibrated channel scales (else scales per token and KV head)."""
        ext = native_build.load()
        self.isa = ext.isa()
        self.profile_phases: list[str] = ext.profile_phases()     # per-layer steps Decoder.take_profile() times
        self.name = f"native/{self.isa}"
        t = tensors
        self.threads = threads or torch.get_num_threads()
        self.layers, self.kv_heads, self.head_dim = spec["layers"], spec["kv_heads"], spec["head_dim"]
        self.max_positions = t["rope.cos"].shape[0]
        self.decoder = ext.Decoder(spec["hidden"], spec["heads"], self.kv_heads, self.head_dim, spec["ffn"],
                                   spec["eps"], t["rope.cos"], t["rope.sin"], self.threads)
        for i in range(self.layers):
            L = f"layers.{i}"
            self.decoder.add_layer(t[f"{L}.input_norm"], t[f"{L}.post_norm"],
                                   [t[f"{L}.qkv.lines"], t[f"{L}.qkv.meta"]], t.get(f"{L}.qkv.bias"),
                                   [t[f"{L}.o.lines"], t[f"{L}.o.meta"]],
                                   [t[f"{L}.gate_up.lines"], t[f"{L}.gate_up.meta"]],
                                   [t[f"{L}.down.lines"], t[f"{L}.down.meta"]], *spec["groups"][i],
                                   spec["windows"][i])
            set_static_act_scales(self.decoder, i, {k: t.get(f"{L}.{k}.act_scale") for k in LINEAR_GROUPS})
            if kv_channels:
                if f"{L}.{KEY_SCALE}" not in t:
                    raise ValueError("kv_channels: the native state has no calibrated KV cache scales")
                self.decoder.set_kv_channel_scales(i, t[f"{L}.{KEY_SCALE}"], t[f"{L}.{VALUE_SCALE}"])
        self.norm_weight, self.norm_eps = t["norm"], spec["norm_eps"]
        self.embed = t["embed"]                                                  # (V, D), the model's dtype
        head = spec["lm_head"]
        self.head_kind = head["kind"]                                            # quantized, tied or float
        if head["kind"] == "quantized":
            self.head = ext.Linear(t["lm_head.lines"], t["lm_head.meta"], t.get("lm_head.bias"), head["N"],
                                   head["K"], head["group"], self.threads).forward
            self.vocab = head["N"]
        else:
            weight = t["embed"].float() if head["kind"] == "tied" else t["lm_head.weight"]   # (V, D) float32
            bias = t.get("lm_head.bias")
            self.head = lambda x: torch.nn.functional.linear(x, weight, bias)
            self.vocab = weight.shape[0]
        self.weight_bytes = sum(v.numel() * v.element_size() for k, v in t.items() if k.endswith((".lines", ".meta")))
        if head["kind"] != "quantized":
            self.weight_bytes += weight.numel() * 4
        # weight_bytes (above): read per decode step, for GB/s; weights_bytes: all the model tensors held (the whole
        # embedding table too; runtime/held_memory), for the benchmark's peak-RSS split
        held = [v for k, v in t.items() if not k.startswith("rope.")]
        self.weights_bytes = tensor_bytes(held + ([weight] if head["kind"] != "quantized" else []))
        if kv_block_size is None:
            if kv_max_blocks is not None:
                raise UserError("--kv_max_blocks sizes a paged KV cache, and none was asked for.",
                                "Add --kv_block_size N (a multiple of 16), or drop --kv_max_blocks.")
            self.kv = ContiguousKV(self.decoder, self.layers, self.kv_heads, self.head_dim, kv_dtype)
        else:
            self.kv = PagedKV(self.decoder, self.layers, self.kv_heads, self.head_dim, kv_block_size, kv_max_blocks,
                              kv_dtype)
        self.lengths = np.zeros(0, np.int64)
        self.profiler = None                          # evaluation/profiler.NativeProfiler while --profile runs

    @property
    def weight_bytes_per_token(self) -> int:
        """Bytes of weights one decode step reads: every packed Linear (codes + scale/zero bytes) or the fp32
        lm_head, plus one embedding row."""
        return self.weight_bytes + self.embed.shape[1] * self.embed.element_size()

    @property
    def kv_bytes(self) -> int:
        """Bytes the KV cache holds: a contiguous cache all of it, a paged one the blocks used since `start`."""
        return self.kv.resident_bytes

    def start(self, batch: int, max_seq_len: int) -> None:
        check_positions(max_seq_len, self.max_positions)
        self.kv.start(batch, max_seq_len)
        self.capacity = max_seq_len
        self.lengths = np.zeros(batch, np.int64)

    def release_row(self, row: int) -> None:
        """Row `row`'s sequence has ended: a paged cache takes its blocks back. The caller then feeds the row no
        tokens (attention_mask 0 in its new columns), or a new sequence from position 0."""
        self.kv.release_row(row)
        self.lengths[row] = 0                  # the row may take a new sequence

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor,
                last_only: bool = True) -> torch.Tensor:
        tokens = Compacted(input_ids, attention_mask, self.lengths, self.capacity)
        self.kv.reserve(tokens.lengths)
        self.lengths = tokens.lengths
        clock = _Clock(self.profiler)
        h = self.embed[tokens.ids].float()                                         # (M, D)
        clock.lap("model.embed_tokens", "embedding")
        self.decoder.forward(h, tokens.rows, tokens.slots)
        clock.layers(self.decoder)
        # a quantized head computes each row alone: only the rows fed now need it (a batch of mostly idle rows
        # costs no more than its fed rows); a float head (a PyTorch GEMM, whose row results depend on the row
        # count) takes every row, so a row's logits do not depend on how many others were fed
        fed_only = self.head_kind == "quantized"
        logits = self._logits(tokens.select(h, last_only, fed_only))               # (B, n or M, V)
        clock.lap("lm_head", "final norm + lm_head")
        return tokens.arrange(logits, last_only, fed_only)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """x float32 (n, D) -> final RMSNorm -> lm_head -> (n, V)."""
        return self.head(final_norm(x, self.norm_weight, self.norm_eps))


def final_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of x float32 (n, D) with `weight` (D,), contiguous."""
    var = x.pow(2).mean(-1, keepdim=True)
    return (x * torch.rsqrt(var + eps) * weight).contiguous()


def check_positions(max_seq_len: int, max_positions: int) -> None:
    if max_seq_len > max_positions:
        raise ValueError(f"{max_seq_len} cache slots exceed the model's {max_positions} positions")


class Compacted:
    """One call's left-padded rows compacted to their real tokens: `ids`, `rows`, `slots` (M,) int64 (a token's
    cache slot = its row's count of earlier real tokens); `lengths` (B,) the rows' token counts after the call."""

    def __init__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, lengths: np.ndarray,
                 capacity: int) -> None:
        B, T = input_ids.shape
        new = attention_mask[:, -T:].numpy().sum(1)                               # (B,) real tokens per row
        if int((lengths + new).max()) > capacity:
            raise ValueError(f"KV cache of {capacity} slots is full")
        self.B, self.T, self.new = B, T, new
        self.ends = np.cumsum(new)                                                # row b's tokens: [end-new, end)
        if T == 1:                                                                # a decode step: a row's token
            fed = np.flatnonzero(new)                                             # is its one column
            self.ids = input_ids[:, 0][torch.from_numpy(fed)] if len(fed) < B else input_ids[:, 0]
            self.rows = torch.from_numpy(fed)                                     # (M,)
            self.slots = torch.from_numpy(lengths[fed])                           # (M,)
        else:
            keep = np.arange(T)[None, :] >= (T - new)[:, None]                    # (B, T): each row's last new[b]
            self.ids = torch.from_numpy(input_ids.numpy()[keep])                  # (M,), row by row
            self.rows = torch.from_numpy(np.repeat(np.arange(B), new))            # (M,)
            starts = np.repeat(self.ends - new, new)                              # (M,) its row's first token
            self.slots = torch.from_numpy(np.repeat(lengths, new) + np.arange(int(self.ends[-1])) - starts)
        self.lengths = lengths + new

    def select(self, h: torch.Tensor, last_only: bool, fed_only: bool = False) -> torch.Tensor:
        """Hidden states (M, D) -> those whose logits are wanted: each row's last token (B, D), or all (M, D);
        with fed_only (and last_only), only the rows fed in this call (n, D)."""
        if not last_only:
            return h
        rows = np.nonzero(self.new)[0] if fed_only else np.arange(self.B)
        return h[torch.from_numpy(np.maximum(self.ends[rows] - 1, 0))]

    def arrange(self, logits: torch.Tensor, last_only: bool, fed_only: bool = False) -> torch.Tensor:
        """Logits of `select`ed tokens -> (B, 1, V), or (B, T, V) right-aligned (padding positions zero)."""
        new = self.new
        if last_only:
            if fed_only:
                if new.all():
                    return logits[:, None]
                out = torch.zeros(self.B, logits.shape[-1])
                return out.index_copy_(0, torch.from_numpy(np.flatnonzero(new)), logits)[:, None]
            if (new == 0).any():
                logits[torch.from_numpy(new == 0)] = 0.0
            return logits[:, None]
        out = torch.zeros(self.B, self.T, logits.shape[-1])
        for b in range(self.B):
            out[b, self.T - new[b]:] = logits[self.ends[b] - new[b]: self.ends[b]]
        return out


class _Clock:
    """Hands one forward call's step times to a NativeProfiler (does nothing without one)."""

    def __init__(self, profiler) -> None:
        self.profiler = profiler
        self.t = time.perf_counter() if profiler is not None else 0.0

    def lap(self, name: str, kind: str) -> None:
        if self.profiler is not None:
            now = time.perf_counter()
            self.profiler.add(name, kind, now - self.t)
            self.t = now

    def layers(self, decoder) -> None:
        if self.profiler is not None:
            self.profiler.add_layers(decoder.take_profile())
            self.t = time.perf_counter()
