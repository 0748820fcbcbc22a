"""A paged KV cache for the reference (PyTorch) engine: blocks of `block_size` slots handed out on demand.

Same slot convention as kernels/static_cache.StaticKVCache (slot t of a row holds the t-th token fed for that
row, left padding included, so all rows share slot indices), stored in blocks:
  k_pool, v_pool   (n_layers, P, n_kv_heads, block_size, head_dim), P = max_blocks + 1
  table            int64 (batch, ceil(max_seq_len / block_size)): row b's slot s is in block table[b, s // bs]
Block 0 is a shared scratch block: a row's blocks that hold only left padding (or come after the row ended) map
to it, so padding takes no block of its own; what is written there is never attended to (the mask hides those
slots). Other blocks come from a free list, lowest index first, when a row's first real token reaches them.
`write` returns the row's slots [0, end) gathered from its blocks, so attention runs as over a static cache.
"""
from __future__ import annotations

import heapq

import torch

from ..errors import UserError
from .kv_quant import KVPrecision

SCRATCH = 0


class PagedKVCache:
    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, max_seq_len: int, head_dim: int,
                 dtype: torch.dtype, block_size: int, max_blocks: int | None = None) -> None:
        if block_size < 1:
            raise UserError(f"--kv_block_size {block_size} is invalid.", "Use a positive block size (e.g. 64).")
        per_row = -(-max_seq_len // block_size)
        self.max_blocks = batch * per_row if max_blocks is None else max_blocks
        if self.max_blocks < 1:
            raise UserError(f"--kv_max_blocks {max_blocks} is invalid.", "Use 1 or more blocks.")
        shape = (n_layers, self.max_blocks + 1, n_kv_heads, block_size, head_dim)
        self.k = torch.zeros(shape, dtype=dtype)
        self.v = torch.zeros(shape, dtype=dtype)
        self.block_size, self.max_seq_len = block_size, per_row * block_size
        self.table = torch.full((batch, per_row), SCRATCH, dtype=torch.long)
        self.free = list(range(1, self.max_blocks + 1))
        self.length = 0
        self.precision = KVPrecision()          # what a stored key / value becomes (kernels/kv_quant.py)

    @property
    def batch(self) -> int:
        return self.table.shape[0]

    def fits(self, batch: int, dtype: torch.dtype) -> bool:
        return self.batch == batch and self.k.dtype == dtype

    def reset(self) -> None:
        """Every block back to the free list; the storage is kept."""
        self.table.fill_(SCRATCH)
        self.free = list(range(1, self.max_blocks + 1))
        self.length = 0

    @property
    def blocks_in_use(self) -> int:
        return int((self.table != SCRATCH).sum())

    @property
    def held_bytes(self) -> int:
        """Bytes of the pool's storage, keys and values: `max_blocks` + 1 blocks, allocated (and zeroed) whole."""
        return self.k.nbytes + self.v.nbytes

    def prepare(self, start: int, key_valid: torch.Tensor) -> None:
        """Before slots [start, S) are written (key_valid (B, S): 1 for real tokens): give every row a block of its
        own for each block those slots reach where the row has a real token."""
        S, bs = key_valid.shape[1], self.block_size
        if S > self.max_seq_len:
            raise ValueError(f"KV cache overflow: {S} slots needed, {self.max_seq_len} allocated")
        for j in range(start // bs, -(-S // bs)):
            real = key_valid[:, j * bs: min(S, (j + 1) * bs)].any(dim=1)                   # (B,)
            for row in torch.nonzero(real & (self.table[:, j] == SCRATCH)).flatten().tolist():
                if not self.free:
                    raise UserError(f"The paged KV cache is out of blocks: {self.blocks_in_use} blocks of {bs} "
                                    f"tokens are in use and --kv_max_blocks is {self.max_blocks}.",
                                    "Raise --kv_max_blocks, or run fewer or shorter sequences at once.")
                self.table[row, j] = heapq.heappop(self.free)

    def release_row(self, row: int) -> None:
        """Row `row` has ended: its blocks go back to the free list (its later slots are padding)."""
        for block in self.table[row][self.table[row] != SCRATCH].tolist():
            heapq.heappush(self.free, block)
        self.table[row] = SCRATCH

    def write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, n_kv, T, hd) at slots [start, start+T) and return slots [0, start+T), (B, n_kv, S, hd)."""
        B, nkv, T, hd = k.shape
        end, bs = start + T, self.block_size
        if end > self.max_seq_len:
            raise ValueError(f"KV cache overflow: {end} slots needed, {self.max_seq_len} allocated")
        k, v = self.precision.stored(layer, k, v)
        slots = torch.arange(start, end)
        blocks = self.table[:, slots // bs]                                                # (B, T)
        offsets = (slots % bs).expand(B, T)
        self.k[layer][blocks, :, offsets] = k.transpose(1, 2)                              # (B, T, n_kv, hd)
        self.v[layer][blocks, :, offsets] = v.transpose(1, 2)
        used = self.table[:, : -(-end // bs)]                                              # (B, nb)
        k_all = self.k[layer][used].transpose(1, 2).reshape(B, nkv, -1, hd)[:, :, :end]     # (B, n_kv, S, hd)
        v_all = self.v[layer][used].transpose(1, 2).reshape(B, nkv, -1, hd)[:, :, :end]
        return k_all, v_all
