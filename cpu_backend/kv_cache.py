"""The native decoder's KV cache: contiguous (one block of every slot per row) or paged (blocks on demand).

Storage, per layer (what cpu_backend/native/decoder.cpp's `Decoder.set_cache` takes), in the element type of
`--kv_dtype` (float32, bfloat16, float16 or int8; kernels/kv_quant.py states what each stores):
  values  (P, kv_heads, bs, head_dim)
  keys    (P, kv_heads, bs / 16, head_dim, 16): slot o of block p, dim i at [p, kv, o / 16, i, o % 16]
  int8 only: key_scales, value_scales float32 (P, kv_heads, bs), one scale per slot and KV head
  table   int32 (B, nb): row b's slot s is in block table[b, s // bs] at offset s % bs; -1 = no block
with bs, the block size, a multiple of 16, and the same P blocks in every layer (block p of a row is block p of
each layer's pool).

* `ContiguousKV`: bs = the context rounded up to 16, P = B, table[b] = [b]: every row holds its whole context from
  the start (zeroed memory: batch x context slots resident).
* `PagedKV` (`--kv_block_size`): a pool of `--kv_max_blocks` blocks shared by the rows, handed out lowest index
  first as a row's tokens reach a new block and returned when a row ends (`release_row`) or the batch restarts.
  The pool is reserved, not written: memory pages become resident when a block is first used, so resident memory
  follows the blocks in use (their high-water mark), not batch x context. The pool's pages are advised for
  transparent huge pages (`reserve_huge_pages`): residency then grows up to 2 MiB at a time per layer tensor.
  Rows hold only their real tokens (the engine compacts left padding away), so rows of different lengths waste no
  block on padding.
"""
from __future__ import annotations

import heapq
import math
import mmap

import numpy as np
import torch

from ..errors import UserError
from ..kernels.kv_quant import KV_DTYPES, STORAGE, kv_bytes_per_token


def check_kv_dtype(kv_dtype: str) -> None:
    if kv_dtype not in KV_DTYPES:
        raise UserError(f"--kv_dtype {kv_dtype} is invalid.", f"Use one of: {', '.join(KV_DTYPES)}.")


HUGE_PAGE = 2 << 20


def reserve_huge_pages(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor in fresh anonymous memory advised for transparent huge pages (Linux MADV_HUGEPAGE,
    2 MiB aligned; elsewhere plain torch.empty). Pages become resident as they are first written, 2 MiB at a time
    where the kernel grants huge pages: a deep cache then costs one TLB entry per 2 MiB instead of one per 4 KiB
    (docs/native_engine.md)."""
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < HUGE_PAGE or not hasattr(mmap, "MADV_HUGEPAGE"):
        return torch.empty(*shape, dtype=dtype)
    region = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE)                # anonymous, not shared
    offset = -torch.frombuffer(region, dtype=torch.uint8, count=1).data_ptr() % HUGE_PAGE
    region.madvise(mmap.MADV_HUGEPAGE, offset, nbytes // HUGE_PAGE * HUGE_PAGE)
    # the tensor keeps `region` alive (frombuffer holds the buffer)
    return torch.frombuffer(region, dtype=torch.uint8, count=nbytes, offset=offset).view(dtype).view(shape)


def _pool(layers: int, blocks: int, kv_heads: int, block: int, head_dim: int, fill_zero: bool,
          kv_dtype: str) -> tuple[list, list, list, list]:
    """-> keys, values, key_scales, value_scales (the scales empty unless int8), one tensor per layer each."""
    dtype = STORAGE[kv_dtype]

    def make(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.zeros(*shape, dtype=dtype) if fill_zero else reserve_huge_pages(*shape, dtype=dtype)

    keys = [make(blocks, kv_heads, block // 16, head_dim, 16, dtype=dtype) for _ in range(layers)]
    values = [make(blocks, kv_heads, block, head_dim, dtype=dtype) for _ in range(layers)]
    n = layers if kv_dtype == "int8" else 0
    return keys, values, [make(blocks, kv_heads, block) for _ in range(n)], [make(blocks, kv_heads, block)
                                                                               for _ in range(n)]


class ContiguousKV:
    """One block of `ceil(context / 16) * 16` slots per row, allocated at `start` (kept while the shape holds)."""
    paged = False

    def __init__(self, decoder, layers: int, kv_heads: int, head_dim: int, kv_dtype: str = "fp32") -> None:
        check_kv_dtype(kv_dtype)
        self.decoder, self.layers, self.kv_heads, self.head_dim = decoder, layers, kv_heads, head_dim
        self.kv_dtype = kv_dtype
        self.scales: tuple[list, list] = ([], [])     # int8: key and value scales per layer
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.shape: tuple[int, int] | None = None

    def start(self, batch: int, max_seq_len: int) -> None:
        slots = -(-max_seq_len // 16) * 16
        if self.shape != (batch, slots):
            self.keys, self.values, *self.scales = _pool(self.layers, batch, self.kv_heads, slots, self.head_dim,
                                                         True, self.kv_dtype)
            self.table = torch.arange(batch, dtype=torch.int32)[:, None].contiguous()         # (B, 1)
            self.shape = (batch, slots)
        self.bind()

    def bind(self) -> None:
        """Make this the decoder's cache (again: a benchmark may switch one engine between caches)."""
        self.decoder.set_cache(self.keys, self.values, self.table, *self.scales)

    def reserve(self, lengths: np.ndarray) -> None:
        """Rows hold `lengths` (B,) tokens after the coming call: always room (the engine checks the context)."""

    def release_row(self, row: int) -> None:
        """A contiguous row keeps its memory until the batch restarts."""

    @property
    def resident_bytes(self) -> int:
        return self.shape[0] * self.shape[1] * kv_bytes_per_token(self.kv_dtype, self.layers, self.kv_heads,
                                                                  self.head_dim) if self.shape else 0


class PagedKV:
    """A pool of `max_blocks` blocks of `block_size` slots; a block table per row (see the module docstring)."""
    paged = True

    def __init__(self, decoder, layers: int, kv_heads: int, head_dim: int, block_size: int,
                 max_blocks: int | None, kv_dtype: str = "fp32") -> None:
        check_kv_dtype(kv_dtype)
        if block_size < 16 or block_size % 16:
            raise UserError(f"--kv_block_size {block_size} is invalid.", "Use a multiple of 16 (16, 32, 64, ...).")
        if max_blocks is not None and max_blocks < 1:
            raise UserError(f"--kv_max_blocks {max_blocks} is invalid.", "Use 1 or more blocks.")
        self.decoder, self.layers, self.kv_heads, self.head_dim = decoder, layers, kv_heads, head_dim
        self.block_size, self.max_blocks, self.kv_dtype = block_size, max_blocks, kv_dtype
        self.scales: tuple[list, list] = ([], [])     # int8: key and value scales per layer
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.pool_blocks = 0
        self.table = torch.zeros(0, 0, dtype=torch.int32)
        self.held: list[int] = []                  # blocks held per row
        self.free: list[int] = []                  # heap of free block indices
        self.peak_blocks = 0

    @property
    def block_bytes(self) -> int:
        """Bytes of one block over all layers (keys and values, and int8's scales)."""
        return self.block_size * kv_bytes_per_token(self.kv_dtype, self.layers, self.kv_heads, self.head_dim)

    def start(self, batch: int, max_seq_len: int) -> None:
        """A new batch: every block is free; the table has room for `max_seq_len` slots per row. Without
        --kv_max_blocks the pool holds batch x context (reserved, resident only as used)."""
        per_row = -(-max_seq_len // self.block_size)
        blocks = self.max_blocks if self.max_blocks is not None else batch * per_row
        if blocks > self.pool_blocks:
            self.keys, self.values, *self.scales = _pool(self.layers, blocks, self.kv_heads, self.block_size,
                                                         self.head_dim, False, self.kv_dtype)
            self.pool_blocks = blocks
        self.free = list(range(self.pool_blocks if self.max_blocks is None else self.max_blocks))
        heapq.heapify(self.free)
        self.table = torch.full((batch, per_row), -1, dtype=torch.int32)
        self.held = [0] * batch
        self.peak_blocks = 0
        self.bind()

    def bind(self) -> None:
        """Make this the decoder's cache (again: a benchmark may switch one engine between caches)."""
        self.decoder.set_cache(self.keys, self.values, self.table, *self.scales)

    def reserve(self, lengths: np.ndarray) -> None:
        """Give every row the blocks its `lengths` (B,) tokens need after the coming call (the table is updated in
        place; the decoder reads it at every call)."""
        need = -(-lengths // self.block_size)                                          # (B,) blocks per row
        extra = int(np.maximum(need - np.asarray(self.held), 0).sum())
        if extra > len(self.free):
            in_use = sum(self.held)
            raise UserError(f"The paged KV cache is out of blocks: the batch needs {in_use + extra} blocks of "
                            f"{self.block_size} tokens to hold {int(lengths.sum())} tokens, and --kv_max_blocks is "
                            f"{len(self.free) + in_use}.",
                            f"Raise --kv_max_blocks to at least {in_use + extra} (each block takes "
                            f"{self.block_bytes / 2**20:.2f} MiB), or run fewer or shorter sequences at once.")
        t = self.table.numpy()
        for row, n in enumerate(need):
            while self.held[row] < n:
                t[row, self.held[row]] = heapq.heappop(self.free)
                self.held[row] += 1
        self.peak_blocks = max(self.peak_blocks, sum(self.held))

    def release_row(self, row: int) -> None:
        """Return row's blocks to the pool (its sequence has ended)."""
        t = self.table.numpy()
        for j in range(self.held[row]):
            heapq.heappush(self.free, int(t[row, j]))
            t[row, j] = -1
        self.held[row] = 0

    @property
    def blocks_in_use(self) -> int:
        return sum(self.held)

    @property
    def resident_bytes(self) -> int:
        """Bytes of the blocks ever used since `start` (the pool's pages written so far, at most)."""
        return self.peak_blocks * self.block_bytes
