"""Forward-pass engines over a loaded model, each keeping its KV cache between calls.

Both take the same inputs for one call: input_ids (B, T) new tokens, position_ids (B, T) RoPE positions, and
attention_mask (B, S) with S = tokens fed so far including these, 1 for real tokens and 0 for left padding.
They return logits (B, T, V), or (B, 1, V) for the last position only.

* `TransformersEngine`: the unmodified transformers forward with its dynamic cache (the baseline).
* `StaticCacheEngine`: the model after `fuse_model` (grouped q/k/v and gate/up), run by a lean loop over the
  decoder layers with the project's SDPA attention and a `StaticKVCache` allocated once per batch size, or with
  `kv_block_size` a `PagedKVCache` (blocks handed out as rows reach them, returned by `release_row`).
"""
from __future__ import annotations

import torch

from ..kernels.attention import attention_mask as build_mask
from ..kernels.kv_quant import KVPrecision
from ..kernels.paged_cache import PagedKVCache
from ..kernels.static_cache import StaticKVCache
from .chunked_prefill import DEFAULT_PREFILL_CHUNK
from .fusion import fuse_model, head_dim
from .held_memory import module_bytes, tensor_bytes
from .model_loader import LoadedModel
from .module_paths import get_module


class TransformersEngine:
    name = "transformers"
    prefill_chunk = DEFAULT_PREFILL_CHUNK["torch"]

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.cache = None

    @property
    def weights_bytes(self) -> int:
        return module_bytes(self.loaded.model)

    @property
    def kv_bytes(self) -> int:
        """Bytes of the dynamic cache's key and value tensors (they grow with the tokens fed)."""
        layers = getattr(self.cache, "layers", None) or []
        return tensor_bytes(t for layer in layers
                            for t in (getattr(layer, "keys", None), getattr(layer, "values", None)))

    def start(self, batch: int, max_seq_len: int) -> None:
        from transformers import DynamicCache

        self.cache = DynamicCache(config=self.loaded.config)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor,
                last_only: bool = True) -> torch.Tensor:
        out = self.loaded.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                cache=self.cache, use_cache=True, logits_to_keep=1 if last_only else 0)
        return out.logits


class StaticCacheEngine:
    name = "static-cache"
    prefill_chunk = DEFAULT_PREFILL_CHUNK["torch"]

    def __init__(self, loaded: LoadedModel, kv_block_size: int | None = None, kv_max_blocks: int | None = None,
                 kv_precision: KVPrecision | None = None) -> None:
        """kv_precision: what the cache holds of each key and value (kernels/kv_quant.py; default as computed)."""
        fuse_model(loaded.model, loaded.config, loaded.family)
        self.kv_block_size, self.kv_max_blocks = kv_block_size, kv_max_blocks
        self.kv_precision = kv_precision or KVPrecision()
        self.loaded = loaded
        f, m = loaded.family, loaded.model
        self.embed = get_module(m, f.embed)
        self.layers = get_module(m, f.layers)
        self.norm = get_module(m, f.final_norm)
        self.lm_head = get_module(m, f.lm_head)
        self.rotary = get_module(m, f.rotary)
        self.windows = sorted({layer.self_attn.window for layer in self.layers}, key=lambda w: (w is None, w))
        self.cache: StaticKVCache | PagedKVCache | None = None

    @property
    def weights_bytes(self) -> int:
        return module_bytes(self.loaded.model)

    @property
    def kv_bytes(self) -> int:
        """Bytes of the cache's storage (static: batch x max_seq_len slots; paged: its pool of blocks)."""
        return 0 if self.cache is None else self.cache.held_bytes

    def start(self, batch: int, max_seq_len: int) -> None:
        """Reuse the cache storage when batch, dtype and capacity allow; otherwise allocate it once."""
        c = self.loaded.config
        if self.cache is None or not self.cache.fits(batch, self.loaded.dtype) or self.cache.max_seq_len < max_seq_len:
            shape = (c.num_hidden_layers, batch, c.num_key_value_heads, max_seq_len, head_dim(c), self.loaded.dtype)
            self.cache = (StaticKVCache(*shape) if self.kv_block_size is None else
                          PagedKVCache(*shape, self.kv_block_size, self.kv_max_blocks))
        self.cache.precision = self.kv_precision
        self.cache.reset()

    def release_row(self, row: int) -> None:
        """Row `row`'s sequence has ended (the caller feeds it only padding from now): a paged cache frees its
        blocks."""
        self.cache.release_row(row)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor,
                last_only: bool = True) -> torch.Tensor:
        f, cache = self.loaded.family, self.cache
        start = cache.length
        cache.prepare(start, attention_mask)
        h = self.embed(input_ids)                                    # (B, T, D)
        cos, sin = self.rotary(h, position_ids)                      # (B, T, hd) each
        masks = {w: build_mask(attention_mask, start, w) for w in self.windows}  # (B, 1, T, S)
        for layer in self.layers:
            attn = getattr(layer, f.attn)
            x = getattr(layer, f.input_norm)(h)
            h = h + attn(x, cos, sin, masks[attn.window], cache, start)
            h = h + getattr(layer, f.mlp)(getattr(layer, f.post_attn_norm)(h))
        cache.length = start + input_ids.shape[1]
        if last_only:
            h = h[:, -1:]
        return self.lm_head(self.norm(h))                            # (B, T or 1, V)


def make_engine(loaded: LoadedModel, flash_attention: bool, kv_block_size: int | None = None,
                kv_max_blocks: int | None = None, kv_precision: KVPrecision | None = None):
    """The PyTorch engine: StaticCacheEngine with `flash_attention` (paged with `kv_block_size`, holding keys and
    values at `kv_precision`), else TransformersEngine."""
    if not flash_attention:
        return TransformersEngine(loaded)
    return StaticCacheEngine(loaded, kv_block_size, kv_max_blocks, kv_precision)

