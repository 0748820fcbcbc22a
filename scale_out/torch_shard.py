"""One rank's part of the model in PyTorch (the reference engine of a mesh run).

The rank's own model (shard_loader.py) after `fuse_model` (grouped q/k/v and gate/up, attention over a static KV
cache of the local KV heads), run layer by layer as runtime/engines.StaticCacheEngine does, with the tensor-parallel
all-reduce after o_proj and after down_proj, the vocabulary-parallel embedding (each rank looks up the ids in its
rows, zeros elsewhere, then all-reduce) and lm_head (all-gather of the logits). Inputs and outputs are those of the
engine interface restricted to the rank's batch rows: ids/positions (b, T), mask (b, S); hidden states (b, T, D).
"""
from __future__ import annotations

import torch
from torch import nn

from ..kernels.attention import attention_mask as build_mask
from ..kernels.static_cache import StaticKVCache
from ..runtime.fusion import fuse_model
from ..runtime.model_loader import LoadedModel
from ..runtime.module_paths import get_module
from .comm import Comm
from .partition import RankShard


class AllReduced(nn.Module):
    """`module(x)` summed over the tensor-parallel group (a row-parallel Linear's partial products)."""

    def __init__(self, module: nn.Module, comm: Comm) -> None:
        super().__init__()
        self.module, self.comm = module, comm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.comm.all_reduce(self.module(x))


class TorchShard:
    name = "torch"

    def __init__(self, loaded: LoadedModel, shard: RankShard, comm: Comm, vocab_sizes: list[int]) -> None:
        f, m, c = loaded.family, loaded.model, loaded.config
        fuse_model(m, c, f)
        self.loaded, self.shard, self.comm, self.vocab_sizes = loaded, shard, comm, vocab_sizes
        self.layers = get_module(m, f.layers)
        for layer in self.layers:
            attn, mlp = getattr(layer, f.attn), getattr(layer, f.mlp)
            attn.o_proj = AllReduced(attn.o_proj, comm)
            mlp.down_proj = AllReduced(mlp.down_proj, comm)
        self.embed = get_module(m, f.embed) if shard.first_stage else None
        self.norm = get_module(m, f.final_norm) if shard.last_stage else None
        self.lm_head = get_module(m, f.lm_head) if shard.last_stage else None
        self.rotary = get_module(m, f.rotary)
        self.windows = sorted({layer.self_attn.window for layer in self.layers}, key=lambda w: (w is None, w))
        self.cache: StaticKVCache | None = None
        self.hidden = c.hidden_size
        self.vocab = sum(vocab_sizes)
        self.held_bytes = sum(t.numel() * t.element_size() for t in list(m.parameters()) + list(m.buffers())
                              if not t.is_meta)                      # what the rank holds
        self.weight_bytes = self.held_bytes                           # read per decode token (the embedding: all)

    def start(self, batch: int, max_seq_len: int) -> None:
        c = self.loaded.config
        if self.cache is None or not self.cache.fits(batch, self.loaded.dtype) or self.cache.max_seq_len < max_seq_len:
            self.cache = StaticKVCache(len(self.layers), batch, c.num_key_value_heads, max_seq_len, c.head_dim,
                                       self.loaded.dtype)
        self.cache.reset()

    def begin(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> None:
        """The call's inputs for this rank's rows: ids/positions (b, T), mask (b, S)."""
        self.positions, self.mask, self.batch_shape = positions, mask, tuple(ids.shape)

    def hidden_shape(self) -> tuple[tuple[int, ...], torch.dtype]:
        """Shape and dtype of the hidden state a stage passes on: (b, T, D)."""
        return (*self.batch_shape, self.hidden), self.loaded.dtype

    @torch.inference_mode()
    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (b, T) -> embeddings (b, T, D): the local rows, summed over the tensor-parallel group."""
        return self.comm.vocab_parallel_embedding(self.embed.weight, ids, self.shard.vocab)

    @torch.inference_mode()
    def run_layers(self, h: torch.Tensor) -> torch.Tensor:
        """h (b, T, D) through the stage's layers; the KV cache advances by T."""
        f, cache = self.loaded.family, self.cache
        start = cache.length
        cos, sin = self.rotary(h, self.positions)                         # (b, T, hd) each
        masks = {w: build_mask(self.mask, start, w) for w in self.windows}  # (b, 1, T, S)
        for layer in self.layers:
            attn = getattr(layer, f.attn)
            h = h + attn(getattr(layer, f.input_norm)(h), cos, sin, masks[attn.window], cache, start)
            h = h + getattr(layer, f.mlp)(getattr(layer, f.post_attn_norm)(h))
        cache.length = start + h.shape[1]
        return h

    @torch.inference_mode()
    def logits(self, h: torch.Tensor, last_only: bool) -> torch.Tensor:
        """h (b, T, D) -> final norm -> lm_head over the whole vocabulary: (b, T or 1, V) float32."""
        if last_only:
            h = h[:, -1:]
        return self.comm.all_gather_last(self.lm_head(self.norm(h)).float(), self.vocab_sizes)
