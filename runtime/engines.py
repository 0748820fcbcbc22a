"""Forward-pass engines over a loaded model, each keeping its KV cache between calls.

Both take the same inputs for one call: input_ids (B, T) new tokens, position_ids (B, T) RoPE positions, and
attention_mask (B, S) with S = tokens fed so far including these, 1 for real tokens and 0 for left padding.
They return logits (B, T, V), or (B, 1, V) for the last position only.

* `TransformersEngine`: the unmodified transformers forward with its dynamic cache (the baseline).
* `StaticCacheEngine`: the model after `fuse_model` (grouped q/k/v and gate/up), run by a lean loop over the
  decoder layers with the project's SDPA attention and a `StaticKVCache` allocated once per batch size.
"""
from __future__ import annotations

import torch

from ..kernels.attention import attention_mask as build_mask
from ..kernels.static_cache import StaticKVCache
from .fusion import fuse_model, head_dim
from .model_loader import LoadedModel
from .module_paths import get_module


class TransformersEngine:
    name = "transformers"

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.cache = None

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

    def __init__(self, loaded: LoadedModel) -> None:
        fuse_model(loaded.model, loaded.config, loaded.family)
        self.loaded = loaded
        f, m = loaded.family, loaded.model
        self.embed = get_module(m, f.embed)
        self.layers = get_module(m, f.layers)
        self.norm = get_module(m, f.final_norm)
        self.lm_head = get_module(m, f.lm_head)
        self.rotary = get_module(m, f.rotary)
        self.windows = sorted({layer.self_attn.window for layer in self.layers}, key=lambda w: (w is None, w))
        self.cache: StaticKVCache | None = None

    def start(self, batch: int, max_seq_len: int) -> None:
        """Reuse the cache storage when batch, dtype and capacity allow; otherwise allocate it once."""
        c = self.loaded.config
        if self.cache is None or not self.cache.fits(batch, self.loaded.dtype) or self.cache.max_seq_len < max_seq_len:
            self.cache = StaticKVCache(c.num_hidden_layers, batch, c.num_key_value_heads, max_seq_len,
                                       head_dim(c), self.loaded.dtype)
        self.cache.reset()

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor,
                last_only: bool = True) -> torch.Tensor:
        f, cache = self.loaded.family, self.cache
        start = cache.length
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


def make_engine(loaded: LoadedModel, flash_attention: bool):
    return StaticCacheEngine(loaded) if flash_attention else TransformersEngine(loaded)
