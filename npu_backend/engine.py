"""The runtime engine over an exported model folder (same interface as runtime/engines.py).

`start(batch, max_seq_len)` allocates the KV cache once: per layer a key and a value OrtValue of shape
(batch, kv_heads, max_seq_len, head_dim), bound as both the past input and the present output of every run, so
GroupQueryAttention writes new entries in place (no copy of the cache per token).

`forward(input_ids, position_ids, attention_mask, last_only)` takes the runtime's left-padded layout and feeds the
graph its right-padded one: each row's real tokens of the chunk first; the attention_mask fed has, per row, as
many ones as the row has tokens so far (GroupQueryAttention's seqlens_k) and, in its last T columns, as many as
the row has in this chunk. The graph returns logits right-aligned per row (num_logits_to_keep = 1: the last real
token only), i.e. in the caller's left-padded layout.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..runtime.chunked_prefill import DEFAULT_PREFILL_CHUNK
from .providers import choose_providers, ort_module, session_options


def right_padded(input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor,
                 prior: np.ndarray, capacity: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The runtime's left-padded call (ids, positions (B, T), mask (B, S)) in the graph's layout, given `prior`
    (B,) real tokens per row so far and the KV cache's `capacity` slots -> ids, positions (B, T) int64 with each
    row's real tokens of the chunk first; the mask (B, max(prior) + T) int64 the graph takes (see the module
    docstring); new (B,) real tokens per row in this chunk. A call that would overflow the cache is a ValueError.

    GroupQueryAttention takes right padding only in its prompt mode (no row has a past), and at least one token
    per row. Past that mode, it assumes T new tokens in every row: a row with fewer (a short prompt starting within
    a later prefill chunk, so no past of its own) then claims T tokens, its real ones first; in prompt mode a row
    with none (it starts in a later chunk) claims one. The slots after a row's real tokens then hold keys of
    padding, which no real token sees (attention is causal) and which the row's next tokens overwrite before
    anything reads them; the logits of such a row's padding positions are meaningless, as any padding's."""
    B, T = input_ids.shape
    chunk = attention_mask[:, -T:]
    full = bool(chunk.all())                                   # no padding in this chunk (the common case)
    new = np.full(B, T, np.int64) if full else chunk.sum(1).numpy()
    prompt = not prior.any()
    claimed = np.maximum(new, 1) if prompt else np.full(B, T, np.int64)   # tokens GroupQueryAttention writes
    if int((prior + claimed).max()) > capacity:
        raise ValueError(f"KV cache of {capacity} slots is full")
    if full:
        ids = input_ids.numpy().astype(np.int64, copy=False)
        pos = position_ids.numpy().astype(np.int64, copy=False)
    else:                                                      # left -> right padding, row by row
        ids, pos = np.zeros((B, T), np.int64), np.zeros((B, T), np.int64)
        for b in range(B):
            ids[b, : new[b]] = input_ids[b, T - new[b]:].numpy()
            pos[b, : new[b]] = position_ids[b, T - new[b]:].numpy()
    width = int(prior.max()) + T
    if (prior == prior[0]).all() and full:
        mask = np.ones((B, width), np.int64)
    else:
        mask = np.zeros((B, width), np.int64)
        for b in range(B):
            extra = int(claimed[b] - new[b])                   # ones counted by seqlens_k, not by the chunk
            if prompt and extra:                               # an empty row: one padding token
                mask[b, 0] = 1
                continue
            if prior[b] + extra > width - T:
                raise ValueError(f"row {b}: {new[b]} of {T} tokens after a past of {prior[b]} cannot be fed to "
                                 "GroupQueryAttention")
            mask[b, : prior[b] + extra] = 1
            mask[b, width - T: width - T + new[b]] = 1
    return ids, pos, mask, new


class OrtEngine:
    prefill_chunk = DEFAULT_PREFILL_CHUNK["onnxruntime"]

    def __init__(self, folder: Path, ep: str | None = None, strict: bool = False, threads: int | None = None) -> None:
        ort = ort_module()
        providers = choose_providers(ep, strict)
        threads = threads or torch.get_num_threads()
        self.session = ort.InferenceSession(str(Path(folder) / "model.onnx"),
                                            sess_options=session_options(strict, threads, providers),
                                            providers=providers)
        self.providers = self.session.get_providers()
        self.provider = self.providers[0]
        self.name = f"onnxruntime/{self.provider}"
        self.folder = Path(folder)
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.layers = sum(1 for n in inputs if n.startswith("past_key_values.") and n.endswith(".key"))
        shape = inputs["past_key_values.0.key"].shape                 # [batch, kv_heads, past, head_dim]
        self.kv_heads, self.head_dim = int(shape[1]), int(shape[3])
        self.cache: list | None = None
        self.cache_arrays: list[np.ndarray] = []
        self.io = None
        self.row_io: dict = {}
        self.logits = None
        self.vocab = int(next(o for o in self.session.get_outputs() if o.name == "logits").shape[-1])
        self.lengths: np.ndarray | None = None                         # (B,) real tokens so far per row
        self._ort = ort

    @property
    def weights_bytes(self) -> int:
        """Bytes of the graph and its initializers on disk (model.onnx + model.onnx.data), which the session loads."""
        return sum(f.stat().st_size for f in self.folder.glob("model.onnx*") if f.is_file())

    @property
    def kv_bytes(self) -> int:
        """Bytes of the cache arrays (float32, batch x kv_heads x max_seq_len x head_dim per layer, keys and values)."""
        return sum(a.nbytes for a in self.cache_arrays)

    def start(self, batch: int, max_seq_len: int) -> None:
        shape = (batch, self.kv_heads, max_seq_len, self.head_dim)
        if self.cache is None or self.cache_arrays[0].shape != shape:
            # The cache lives in numpy arrays that the OrtValues wrap (no copy), so one row's slice can be bound too.
            self.cache_arrays = [np.zeros(shape, np.float32) for _ in range(2 * self.layers)]
            self.cache = [self._ort.OrtValue.ortvalue_from_numpy(a) for a in self.cache_arrays]
            # One binding for the whole generation: the cache buffers stay bound; forward rebinds the inputs.
            self.io = self._binding(self.cache)
            self.row_io = {}                                   # row -> binding of that row's cache slices
        self.lengths = np.zeros(batch, np.int64)

    def _binding(self, cache: list):
        io = self.session.io_binding()
        for i in range(self.layers):
            for j, kv in enumerate(("key", "value")):
                io.bind_ortvalue_input(f"past_key_values.{i}.{kv}", cache[2 * i + j])
                io.bind_ortvalue_output(f"present.{i}.{kv}", cache[2 * i + j])
        return io

    def _row_binding(self, row: int):
        """A binding of row `row`'s slice of the cache (batch 1), made once per cache."""
        if row not in self.row_io:
            views = [self._ort.OrtValue.ortvalue_from_numpy(a[row:row + 1]) for a in self.cache_arrays]
            self.row_io[row] = (self._binding(views), views)
        return self.row_io[row][0]

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor,
                last_only: bool = True) -> torch.Tensor:
        """One call of the runtime's interface. Several new tokens after a past in a batch of several rows (a later
        chunk of a chunked prefill) run row by row: GroupQueryAttention takes them for one row at a time only."""
        B, T = input_ids.shape
        if B > 1 and T > 1 and self.lengths.any():
            return self._forward_rows(input_ids, position_ids, attention_mask, last_only)
        return self._run(self.io, input_ids, position_ids, attention_mask, last_only, slice(None))

    def _run(self, io, input_ids, position_ids, attention_mask, last_only: bool, rows: slice) -> torch.Tensor:
        B, T = input_ids.shape
        prior = self.lengths[rows]
        ids, pos, mask, new = right_padded(input_ids, position_ids, attention_mask, prior, self.cache[0].shape()[2])
        self.lengths[rows] = prior + new
        io.bind_cpu_input("input_ids", ids)
        io.bind_cpu_input("attention_mask", mask)
        io.bind_cpu_input("position_ids", pos)
        io.bind_cpu_input("num_logits_to_keep", np.array([1 if last_only else 0], np.int64))
        out_shape = (B, 1 if last_only else T, self.vocab)
        if self.logits is None or tuple(self.logits.shape()) != out_shape:
            self.logits = self._ort.OrtValue.ortvalue_from_numpy(np.empty(out_shape, np.float32))
        io.bind_ortvalue_output("logits", self.logits)    # preallocated: binding an unallocated output costs more
        self.session.run_with_iobinding(io)
        return torch.from_numpy(self.logits.numpy().copy())                          # (B, T or 1, V)

    def _forward_rows(self, input_ids, position_ids, attention_mask, last_only: bool) -> torch.Tensor:
        """The call one row at a time, each with only its real tokens of the chunk -> logits (B, T or 1, V),
        right-aligned per row (zero where a row has no token)."""
        B, T = input_ids.shape
        new = attention_mask[:, -T:].sum(1).tolist()
        out = torch.zeros(B, 1 if last_only else T, self.vocab)
        for b, n in enumerate(new):
            if n == 0:
                continue
            ones = torch.ones(1, int(self.lengths[b]) + n, dtype=torch.long)
            logits = self._run(self._row_binding(b), input_ids[b:b + 1, T - n:], position_ids[b:b + 1, T - n:],
                               ones, last_only, slice(b, b + 1))
            out[b, out.shape[1] - logits.shape[1]:] = logits[0]
        return out
