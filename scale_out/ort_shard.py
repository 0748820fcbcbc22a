"""One rank's part of the model on ONNX Runtime (`--target npu`, or `--target cpu --engine onnx`, on a mesh).

Each rank runs its own ONNX Runtime sessions on the execution provider `--ep` chooses (npu_backend/providers.py):
one per segment of its slice (npu_backend/segment_graphs.py: per layer an attention graph ending in o_proj and an
MLP graph ending in down_proj, and on the last stage the final norm + lm_head), because the ranks sum the partial
outputs of o_proj and down_proj (Comm.all_reduce) between those graphs. The residual adds, the embedding lookup of
the rank's vocabulary rows and the gather of the logits run here. The hidden state is in the graphs' layout: each
row's real tokens of the call first (right padding), as npu_backend/engine.right_padded arranges them.

Segment cache per device layout: the graphs of a slice are written once into `$EDGEAWQ_CACHE/onnx-mesh/<key>`
(key: the checkpoint's fingerprint, the slice (partition.RankShard.key), the accuracy level, the format version),
with a record of every file's size and hash that is checked before each use; a damaged folder is written again.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

from ..checkpoints.cache_integrity import damage, file_table
from ..checkpoints.directory import atomic_directory
from ..npu_backend.engine import right_padded
from ..npu_backend.providers import choose_providers, ort_module, session_options
from ..npu_backend.segment_graphs import segment_names, write_segments
from ..runtime.fusion import rope_half_tables
from ..runtime.memory import release_free_memory
from ..runtime.model_identity import cache_root, fingerprint_of
from ..runtime.model_loader import LoadedModel
from ..runtime.module_paths import get_module
from .comm import Comm
from .partition import RankShard

FORMAT = "edgeawq-onnx-segments"
FORMAT_VERSION = 1
RECORD = "edgeawq_segments.json"


def segment_folder(fingerprint: str, slice_key: str, accuracy_level: int) -> Path:
    key = hashlib.sha256(f"{FORMAT}:{FORMAT_VERSION}:{fingerprint}:{slice_key}:{accuracy_level}".encode())
    return cache_root() / "onnx-mesh" / key.hexdigest()[:20]


def ensure_segments(loaded: LoadedModel, shard: RankShard, accuracy_level: int) -> Path:
    """The folder of this slice's segment graphs: reused when its record matches and its files are intact, else
    written (atomically; a concurrent writer of the same slice is waited for)."""
    fingerprint = fingerprint_of(loaded)
    folder = segment_folder(fingerprint, shard.key(), accuracy_level)
    expect = {"format": FORMAT, "format_version": FORMAT_VERSION, "source_fingerprint": fingerprint,
              "slice": shard.key(), "accuracy_level": accuracy_level}
    if (folder / RECORD).exists():
        try:
            record = json.loads((folder / RECORD).read_text())
        except (OSError, json.JSONDecodeError):
            record = {}
        problem = ("its record does not match" if {k: record.get(k) for k in expect} != expect
                   else damage(folder, record.get("files")))
        if problem is None:
            return folder
        print(f"[onnx] the segment cache {folder} is unusable ({problem}); writing it again", file=sys.stderr)
    with atomic_directory(folder, wait=True) as tmp:
        files = write_segments(loaded, tmp, accuracy_level, shard.last_stage)
        (tmp / RECORD).write_text(json.dumps({**expect, "files": file_table(tmp, files)}, indent=1))
    return folder


class OrtShard:
    def __init__(self, loaded: LoadedModel, shard: RankShard, comm: Comm, vocab_sizes: list[int], threads: int,
                 options, target: str) -> None:
        ort = ort_module()
        c, f, m = loaded.config, loaded.family, loaded.model
        self.loaded, self.shard, self.comm, self.vocab_sizes = loaded, shard, comm, vocab_sizes
        self.vocab = sum(vocab_sizes)
        self.hidden, self.kv_heads, self.head_dim = c.hidden_size, c.num_key_value_heads, c.head_dim
        self.layers = c.num_hidden_layers
        strict = options.strict_ep and target != "cpu"                  # the cpu target runs the CPU provider
        providers = choose_providers("CPU" if target == "cpu" else options.ep, strict)
        folder = ensure_segments(loaded, shard, options.accuracy_level)
        so = session_options(strict, threads, providers)
        self.sessions = {name: ort.InferenceSession(str(folder / f"{name}.onnx"), sess_options=so,
                                                    providers=providers)
                         for name in segment_names(self.layers, shard.last_stage)}
        self.provider = next(iter(self.sessions.values())).get_providers()[0]
        self.name = f"onnxruntime/{self.provider}"
        cos, sin = rope_half_tables(m, c, f)                                   # (positions, hd / 2) each
        self.rope = [ort.OrtValue.ortvalue_from_numpy(t.numpy()) for t in (cos, sin)]
        self.embed = get_module(m, f.embed).weight.detach() if shard.first_stage else None    # (V_r, D)
        self.held_bytes = sum((folder / n).stat().st_size for n in folder.iterdir() if n.name.endswith(".data"))
        self.weight_bytes = self.held_bytes + (self.hidden * self.embed.element_size() if self.embed is not None
                                               else 0)
        if self.embed is not None and not shard.last_stage:
            self.held_bytes += self.embed.numel() * self.embed.element_size()
        m.to("meta")
        release_free_memory()
        self._ort = ort
        self.io = {name: s.io_binding() for name, s in self.sessions.items()}
        self.cache: list = []
        self.lengths = np.zeros(0, np.int64)
        self._outputs: dict = {}

    def start(self, batch: int, max_seq_len: int) -> None:
        shape = (batch, self.kv_heads, max_seq_len, self.head_dim)
        if not self.cache or tuple(self.cache[0].shape()) != shape:
            self.cache = [self._ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, np.float32))
                          for _ in range(2 * self.layers)]
            for i in range(self.layers):                 # bound once: GroupQueryAttention updates them in place
                io = self.io[f"attn.{i}"]
                io.bind_ortvalue_input("cos_cache", self.rope[0])
                io.bind_ortvalue_input("sin_cache", self.rope[1])
                for j, kv in enumerate(("key", "value")):
                    io.bind_ortvalue_input(f"past_key_values.{i}.{kv}", self.cache[2 * i + j])
                    io.bind_ortvalue_output(f"present.{i}.{kv}", self.cache[2 * i + j])
        self.lengths = np.zeros(batch, np.int64)

    def begin(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> None:
        """The call's inputs for this rank's rows: ids/positions (b, T), mask (b, S)."""
        self.ids, _, graph_mask, self.new = right_padded(ids, positions, mask, self.lengths, self.cache[0].shape()[2])
        self.lengths = self.lengths + self.new
        self.batch_shape = tuple(ids.shape)
        for i in range(self.layers):
            self.io[f"attn.{i}"].bind_cpu_input("attention_mask", graph_mask)

    def hidden_shape(self) -> tuple[tuple[int, ...], torch.dtype]:
        return (*self.batch_shape, self.hidden), torch.float32

    def _run(self, name: str, h: torch.Tensor, out_name: str, out_shape: tuple[int, ...]) -> torch.Tensor:
        """Segment `name` on h -> its output (out_shape), a view of the segment's own output buffer (valid until the
        segment runs again)."""
        io = self.io[name]
        io.bind_cpu_input("hidden", h.numpy())
        out = self._outputs.get(name)
        if out is None or tuple(out.shape()) != out_shape:     # one preallocated buffer per segment, bound once
            out = self._outputs[name] = self._ort.OrtValue.ortvalue_from_numpy(np.empty(out_shape, np.float32))
            io.bind_ortvalue_output(out_name, out)
        self.sessions[name].run_with_iobinding(io)
        return torch.from_numpy(out.numpy())

    @torch.inference_mode()
    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """-> (b, T, D) float32 embeddings of the graph-layout ids, summed over the tensor-parallel group."""
        return self.comm.vocab_parallel_embedding(self.embed, torch.from_numpy(self.ids), self.shard.vocab,
                                                  torch.float32)

    @torch.inference_mode()
    def run_layers(self, h: torch.Tensor) -> torch.Tensor:
        """h (b, T, D) float32 through the stage's layers; each segment's partial output summed over the group."""
        h = h.float().contiguous()
        shape = tuple(h.shape)
        for i in range(self.layers):
            for kind in ("attn", "mlp"):
                h = h + self.comm.all_reduce(self._run(f"{kind}.{i}", h, "partial", shape))
        return h

    @torch.inference_mode()
    def logits(self, h: torch.Tensor, last_only: bool) -> torch.Tensor:
        """h (b, T, D) -> (b, T or 1, V) float32, right-aligned per row (the caller's left-padded layout)."""
        b, T, _ = h.shape
        n = 1 if last_only else T
        j = torch.arange(n)[None]                                                     # (1, n)
        idx = (j + torch.from_numpy(self.new)[:, None] - n).clamp(min=0)              # (b, n)
        picked = torch.gather(h, 1, idx[..., None].expand(b, n, h.shape[-1])).contiguous()
        local = self._run("head", picked, "logits", (b, n, self.vocab_sizes[self.shard.tp]))
        return self.comm.all_gather_last(local.clone(), self.vocab_sizes)       # the caller keeps the logits
