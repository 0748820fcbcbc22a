"""One rank's part of the model on the native C++ kernels (cpu_backend/native/decoder.cpp).

The rank's layers are packed into the native layout (cpu_backend/native_state.pack_layer) and run by one native
Decoder of the local sizes (local query / KV heads, local MLP width), whose reducer sums the partial o_proj and
down_proj outputs over the tensor-parallel group (Comm.all_reduce, called from inside the C++ layer loop). The
hidden state between stages is the compacted token matrix (M, D) float32 of the native engine (cpu_backend/
native_engine.Compacted: each row's real tokens only). Embedding: the local vocabulary rows, summed over the group;
lm_head: the local rows (native quantized Linear, or a float32 matmul), then an all-gather of the logits.

Numerics are the native engine's: int8 activations per weight group. Cuts fall on group boundaries, so every rank
quantizes exactly the activation groups the single-process engine does; only the order of the fp32 sums differs.
"""
from __future__ import annotations

import numpy as np
import torch

from ..cpu_backend import native_build
from ..cpu_backend.kv_cache import ContiguousKV
from ..cpu_backend.native_engine import (LINEAR_GROUPS, Compacted, check_positions, final_norm,
                                          set_static_act_scales)
from ..cpu_backend.native_state import pack_group, pack_layer
from ..kernels.qlinear import QLinearPerGrp
from ..runtime.fusion import layer_windows, rope_half_tables
from ..runtime.memory import release_free_memory
from ..runtime.model_loader import LoadedModel
from ..runtime.module_paths import get_module
from .comm import Comm
from .partition import RankShard


class NativeShard:
    def __init__(self, loaded: LoadedModel, shard: RankShard, comm: Comm, vocab_sizes: list[int],
                 threads: int) -> None:
        ext = native_build.load()
        c, f, m = loaded.config, loaded.family, loaded.model
        self.loaded, self.shard, self.comm, self.vocab_sizes = loaded, shard, comm, vocab_sizes
        self.name = f"native/{ext.isa()}"
        self.vocab = sum(vocab_sizes)
        layers = get_module(m, f.layers)
        self.layers, self.kv_heads, self.head_dim = len(layers), c.num_key_value_heads, c.head_dim
        self.hidden = c.hidden_size
        cos, sin = rope_half_tables(m, c, f)
        self.max_positions = cos.shape[0]
        eps = float(getattr(getattr(layers[0], f.input_norm), "variance_epsilon", 1e-6))
        self.decoder = ext.Decoder(c.hidden_size, c.num_attention_heads, self.kv_heads, self.head_dim,
                                   c.intermediate_size, eps, cos, sin, threads)
        self.weight_bytes = 0                  # bytes of weights read per decode token (for GB/s)
        for i, (layer, window) in enumerate(zip(layers, layer_windows(c))):
            t, g = pack_layer(layer, f)
            self.decoder.add_layer(t["input_norm"], t["post_norm"], [t["qkv.lines"], t["qkv.meta"]], t.get("qkv.bias"),
                                   [t["o.lines"], t["o.meta"]], [t["gate_up.lines"], t["gate_up.meta"]],
                                   [t["down.lines"], t["down.meta"]], *g, window or 0)
            set_static_act_scales(self.decoder, i, {k: t.get(f"{k}.act_scale") for k in LINEAR_GROUPS})
            self.weight_bytes += sum(v.numel() for k, v in t.items() if k.endswith((".lines", ".meta")))
            layer.to("meta")
        if comm.mesh.tp > 1:
            self.decoder.set_reducer(comm.all_reduce)
        self.embed = get_module(m, f.embed).weight.detach() if shard.first_stage else None     # (V_r, D)
        self.head, self.head_storage = None, None
        if shard.last_stage:
            norm = get_module(m, f.final_norm)
            self.norm_weight = norm.weight.detach().float()
            self.norm_eps = float(getattr(norm, "variance_epsilon", eps))
            self.head = self._head(ext, get_module(m, f.lm_head), threads)
        self.held_bytes = self.weight_bytes                                              # what the rank holds
        if self.embed is not None:
            self.weight_bytes += self.embed.shape[1] * self.embed.element_size()       # one row read per token
            if self.head_storage != self.embed.data_ptr():                            # else counted as the head
                self.held_bytes += self.embed.numel() * self.embed.element_size()
        m.to("meta")                  # the shard keeps only what it references above
        release_free_memory()
        self.kv = ContiguousKV(self.decoder, self.layers, self.kv_heads, self.head_dim)
        self.lengths = np.zeros(0, np.int64)
        self.capacity = 0

    def _head(self, ext, head, threads: int):
        """The local lm_head rows: x float32 (n, D) -> (n, V_r)."""
        if isinstance(head, QLinearPerGrp):
            tensors: dict = {}
            group = pack_group([head], "lm_head", tensors)
            self.weight_bytes += tensors["lm_head.lines"].numel() + tensors["lm_head.meta"].numel()
            return ext.Linear(tensors["lm_head.lines"], tensors["lm_head.meta"], tensors.get("lm_head.bias"),
                              head.out_features, head.in_features, group, threads).forward
        weight = head.weight.detach().float()                          # (V_r, D); the embedding itself if tied
        self.head_storage = weight.data_ptr()
        bias = None if head.bias is None else head.bias.detach().float()
        self.weight_bytes += weight.numel() * 4
        return lambda x: torch.nn.functional.linear(x, weight, bias)

    def start(self, batch: int, max_seq_len: int) -> None:
        check_positions(max_seq_len, self.max_positions)
        self.kv.start(batch, max_seq_len)
        self.capacity = max_seq_len
        self.lengths = np.zeros(batch, np.int64)

    def begin(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> None:
        """The call's inputs for this rank's rows: ids (b, T), mask (b, S) (positions follow from the cache)."""
        self.tokens = Compacted(ids, mask, self.lengths, self.capacity)
        self.lengths = self.tokens.lengths

    def hidden_shape(self) -> tuple[tuple[int, ...], torch.dtype]:
        return (int(self.tokens.ids.numel()), self.hidden), torch.float32

    @torch.inference_mode()
    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """-> the compacted tokens' embeddings (M, D) float32, summed over the tensor-parallel group."""
        return self.comm.vocab_parallel_embedding(self.embed, self.tokens.ids, self.shard.vocab, torch.float32)

    @torch.inference_mode()
    def run_layers(self, h: torch.Tensor) -> torch.Tensor:
        h = h.contiguous()
        self.decoder.forward(h, self.tokens.rows, self.tokens.slots)
        return h

    @torch.inference_mode()
    def logits(self, h: torch.Tensor, last_only: bool) -> torch.Tensor:
        x = final_norm(self.tokens.select(h, last_only), self.norm_weight, self.norm_eps)
        logits = self.comm.all_gather_last(self.head(x), self.vocab_sizes)               # (B or M, V)
        return self.tokens.arrange(logits, last_only)
