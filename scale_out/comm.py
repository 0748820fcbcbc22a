"""The process groups of a mesh and the collectives the shards use, with a count of the bytes they move.

Groups (torch.distributed, gloo): the default group carries the driver's commands only (ranks wait there between
calls, so its timeout is long; rank 0, which sends them, waits at most `--collective_timeout` for a broadcast
to be taken, since gloo's root blocks until every rank receives); `work` (every rank) and one `tp` group per
(dp, stage) carry the model's data and time out after `--collective_timeout` seconds, so a dead or stuck peer
ends the run instead of hanging it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from .partition import Mesh

COMMAND_TIMEOUT = timedelta(days=7)     # ranks idle between engine calls for as long as the driver needs


@dataclass
class Comm:
    mesh: Mesh
    rank: int
    work: object                        # process group of every rank (data, timeout-bounded)
    tp_group: object                    # this rank's tensor-parallel group
    tp_ranks: list[int]                 # global ranks of that group, by tp index
    timeout_s: float = 300.0            # --collective_timeout
    bytes_reduced: int = 0              # payload bytes this rank sent into all-reduces / all-gathers
    bytes_sent: int = 0                 # payload bytes of point-to-point sends (pipeline, logits to rank 0)
    counts: dict = field(default_factory=lambda: {"all_reduce": 0, "all_gather": 0, "send": 0})

    @property
    def coords(self) -> tuple[int, int, int]:
        return self.mesh.coords(self.rank)

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of `x` over the tensor-parallel group, in place (float32 on the wire)."""
        if self.mesh.tp == 1:
            return x
        buf = x if x.dtype == torch.float32 and x.is_contiguous() else x.float().contiguous()
        dist.all_reduce(buf, group=self.tp_group)
        self.bytes_reduced += buf.numel() * 4
        self.counts["all_reduce"] += 1
        if buf is not x:
            x.copy_(buf)
        return x

    def vocab_parallel_embedding(self, table: torch.Tensor, ids: torch.Tensor, vocab: tuple[int, int],
                                 dtype: torch.dtype | None = None) -> torch.Tensor:
        """Embeddings of `ids` (...) when this rank holds rows [vocab[0], vocab[1]) as `table` (V_r, D): each rank
        looks up the ids in its rows (zeros elsewhere), summed over the tensor-parallel group -> (..., D) in `dtype`
        (default: the table's)."""
        v0, v1 = vocab
        local = ((ids >= v0) & (ids < v1)).unsqueeze(-1)
        h = table[(ids - v0).clamp(0, v1 - v0 - 1)].to(dtype or table.dtype) * local
        return self.all_reduce(h.contiguous())

    def all_gather_last(self, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """Concatenate the tp ranks' `x` (..., sizes[t]) along the last dimension, in tp order."""
        if self.mesh.tp == 1:
            return x
        x = x.float().contiguous()
        parts = [torch.empty((*x.shape[:-1], n), dtype=torch.float32) for n in sizes]
        if len(set(sizes)) == 1:
            dist.all_gather(parts, x, group=self.tp_group)
        else:                          # gloo's all_gather needs equal sizes: pad to the largest share
            width = max(sizes)
            padded = torch.zeros((*x.shape[:-1], width), dtype=torch.float32)
            padded[..., : x.shape[-1]] = x
            full = [torch.empty_like(padded) for _ in sizes]
            dist.all_gather(full, padded, group=self.tp_group)
            parts = [f[..., :n] for f, n in zip(full, sizes)]
        self.bytes_reduced += x.numel() * 4
        self.counts["all_gather"] += 1
        return torch.cat(parts, dim=-1)

    def send(self, x: torch.Tensor, dst: int) -> None:
        x = x.contiguous()
        dist.send(x, dst, group=self.work)
        self.bytes_sent += x.numel() * x.element_size()
        self.counts["send"] += 1

    def recv(self, shape: tuple[int, ...], dtype: torch.dtype, src: int) -> torch.Tensor:
        out = torch.empty(shape, dtype=dtype)
        dist.recv(out, src, group=self.work)
        return out


def build_comm(mesh: Mesh, rank: int, timeout_s: float) -> Comm:
    """Create the groups (a collective call: every rank runs it, in the same order)."""
    timeout = timedelta(seconds=timeout_s)
    work = dist.new_group(list(range(mesh.world)), timeout=timeout, backend="gloo")
    mine, my_ranks = None, []
    for dp in range(mesh.dp):
        for stage in range(mesh.pp):
            ranks = [mesh.rank(dp, stage, t) for t in range(mesh.tp)]
            group = dist.new_group(ranks, timeout=timeout, backend="gloo") if mesh.tp > 1 else None
            if rank in ranks:
                mine, my_ranks = group, ranks
    return Comm(mesh, rank, work, mine, my_ranks, timeout_s)
