"""Rank 0 drives, every other rank serves: the engine calls of a task, broadcast to the mesh.

Global rank 0 runs the task code unchanged; `load_with_options` (tasks/model.py) hands it a `DistributedEngine`
when a mesh session is active. Every engine call becomes a command broadcast on the default process group:
a header int64 (8,) = [op, model id, a, b, c, d, 0, 0], then its tensors on the `work` group:

  LOAD     (id)                      + the load request as a broadcast object; every rank loads its shard, then
                                       the ranks exchange their load errors (one failing rank fails the load)
  START    (id, batch, max_seq_len)  every rank sizes its KV cache for its dp group's rows
  FORWARD  (id, B, T, S, last_only)  + ids (B, T), positions (B, T), mask (B, S); dp group d takes rows
                                       `row_ranges(B, dp)[d]`, stage 0 embeds, each stage runs its layers and
                                       sends the hidden state to the next, the last stage's tp rank 0 sends the
                                       logits (b, T or 1, V) to rank 0, which returns them in the caller's order
  RELEASE  (id)                      the ranks drop the model
  STATS                              every rank's peak RSS and traffic counters, gathered on rank 0
  EXIT                               the ranks leave `serve`

Each rank records in `status[rank]` whether it is executing a command (1) or waiting for one (0): when a collective
times out, the launcher blames the ranks that were executing but did not report.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import UserError
from ..runtime.chunked_prefill import default_prefill_chunk
from .comm import Comm
from .partition import MeshPlan, split_sizes

LOAD, START, FORWARD, RELEASE, EXIT, STATS = 1, 2, 3, 4, 5, 6


def row_ranges(batch: int, groups: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) batch rows of each data-parallel group (earlier groups take the remainder)."""
    out, start = [], 0
    for n in split_sizes(batch, groups):
        out.append((start, start + n))
        start += n
    return out


@dataclass(frozen=True)
class LoadRequest:
    path: str | None
    target: str
    options: object             # runtime.backends.EngineOptions
    dtype: str
    act_dtype: str


class Session:
    """One rank's side of a mesh run: the models it holds and the commands it executes."""

    def __init__(self, comm: Comm, threads: int, status=None, verify: bool = True) -> None:
        """`verify`: every rank checks a quantized checkpoint against its manifest (else rank 0 only: ranks on one
        machine read the same files)."""
        self.comm, self.threads, self.status, self.verify = comm, threads, status, verify
        self.models: dict[int, object] = {}
        self.plans: dict[int, MeshPlan] = {}
        self.next_id = 1

    # -- both sides ----------------------------------------------------------------------------------------------
    def _busy(self, value: int) -> None:
        if self.status is not None:
            self.status[self.comm.rank] = value

    def _header(self, values: list[int] | None = None) -> list[int]:
        h = torch.tensor((values or []) + [0] * (8 - len(values or [])), dtype=torch.int64)
        if self.comm.rank == 0:                   # the sender: a rank that never takes it is a failure
            dist.broadcast(h, 0, async_op=True).wait(timeout=timedelta(seconds=self.comm.timeout_s))
            return h.tolist()
        self._busy(0)
        dist.broadcast(h, 0)                      # default group: long timeout (ranks idle here)
        self._busy(1)
        return h.tolist()

    def _execute(self, header: list[int], request: LoadRequest | None = None, tensors=None):
        op, mid = header[0], header[1]
        if op == LOAD:
            return self._load(mid, request)
        if op == START:
            rows = row_ranges(header[2], self.comm.mesh.dp)[self.comm.coords[0]]
            if rows[1] > rows[0]:
                self.models[mid].start(rows[1] - rows[0], header[3])
            return None
        if op == FORWARD:
            return self._forward(mid, header, tensors)
        if op == RELEASE:
            self.models.pop(mid, None)
            return None
        if op == STATS:
            return self._stats()
        raise RuntimeError(f"unknown command {op}")

    def _load(self, mid: int, request: LoadRequest):
        from .rank_model import load_rank_model

        box = [request]
        dist.broadcast_object_list(box, 0, group=self.comm.work)
        request = box[0]
        error = None
        try:
            self.models[mid], self.plans[mid] = load_rank_model(request, self.comm, self.threads, self.verify)
        except UserError as exc:
            error = (self.comm.rank, exc.problem, exc.fix)
        errors: list = [None] * self.comm.mesh.world
        dist.all_gather_object(errors, error, group=self.comm.work)
        failed = [e for e in errors if e is not None]
        if failed:
            self.models.pop(mid, None)
            rank, problem, fix = failed[0]
            raise UserError(problem + (f" (on rank {rank})" if rank else ""), fix)
        model = self.models[mid]
        sizes: list = [None] * self.comm.mesh.world
        dist.all_gather_object(sizes, model.weight_bytes, group=self.comm.work)
        model.weight_bytes_total = sum(sizes[:self.comm.mesh.tp * self.comm.mesh.pp])   # one data-parallel replica
        return model

    def _stats(self) -> list[dict]:
        import resource

        c = self.comm
        dp, stage, tp = c.coords
        mine = {"rank": c.rank, "dp": dp, "stage": stage, "tp": tp, "bytes_reduced": c.bytes_reduced,
                "bytes_sent": c.bytes_sent, "collectives": sum(c.counts.values()),
                "weight_bytes": sum(getattr(m, "held_bytes", 0) for m in self.models.values()),
                "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
        out: list = [None] * c.mesh.world
        dist.all_gather_object(out, mine, group=c.work)
        return out

    def _forward(self, mid: int, header: list[int], tensors):
        B, T, S, last_only = header[2:6]
        comm, mesh = self.comm, self.comm.mesh
        if tensors is None:
            tensors = [torch.empty(B, T, dtype=torch.int64), torch.empty(B, T, dtype=torch.int64),
                       torch.empty(B, S, dtype=torch.int64)]
        for t in tensors:
            dist.broadcast(t, 0, group=comm.work)
        ids, positions, mask = tensors
        dp, stage, tp = comm.coords
        a, b = row_ranges(B, mesh.dp)[dp]
        if b == a:
            return None
        model = self.models[mid]
        ids, positions, mask = ids[a:b], positions[a:b], mask[a:b]
        model.begin(ids, positions, mask)
        if stage == 0:
            h = model.embed_tokens(ids)
        else:
            shape, dtype = model.hidden_shape()
            h = comm.recv(shape, dtype, mesh.rank(dp, stage - 1, tp))
        h = model.run_layers(h)
        if stage < mesh.pp - 1:
            comm.send(h, mesh.rank(dp, stage + 1, tp))
            return None
        logits = model.logits(h, bool(last_only))                 # (b, T or 1, V)
        if tp == 0 and comm.rank != 0:
            comm.send(logits, 0)
        return logits

    # -- the serving ranks ----------------------------------------------------------------------------------------
    def serve(self) -> None:
        """Execute rank 0's commands until EXIT."""
        while True:
            header = self._header()
            if header[0] == EXIT:
                self._busy(0)
                return
            self._execute(header)

    # -- rank 0 -------------------------------------------------------------------------------------------------
    def load(self, request: LoadRequest):
        mid = self.next_id
        self.next_id += 1
        model = self._execute(self._header([LOAD, mid]), request)
        return mid, model, self.plans[mid]

    def start(self, mid: int, batch: int, max_seq_len: int) -> None:
        self._execute(self._header([START, mid, batch, max_seq_len]))

    def forward(self, mid: int, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                last_only: bool) -> torch.Tensor:
        B, T = ids.shape
        header = self._header([FORWARD, mid, B, T, mask.shape[1], int(last_only)])
        own = self._execute(header, tensors=[ids.to(torch.int64).contiguous(), positions.to(torch.int64).contiguous(),
                                             mask.to(torch.int64).contiguous()])
        mesh, vocab = self.comm.mesh, self.models[mid].vocab
        parts = []
        for d, (a, b) in enumerate(row_ranges(B, mesh.dp)):
            if b == a:
                continue
            src = mesh.rank(d, mesh.pp - 1, 0)
            parts.append(own if src == 0 else self.comm.recv((b - a, T if not last_only else 1, vocab),
                                                             torch.float32, src))
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def stats(self) -> list[dict]:
        return self._execute(self._header([STATS]))

    def release(self, mid: int) -> None:
        self._execute(self._header([RELEASE, mid]))

    def shutdown(self) -> None:
        self._header([EXIT])
        self._busy(0)


class DistributedEngine:
    """The engine interface (runtime/engines.py) over a mesh, on rank 0."""

    def __init__(self, session: Session, mid: int, model, plan: MeshPlan) -> None:
        self.session, self.mid, self.plan = session, mid, plan
        mesh = plan.mesh
        self.name = f"mesh {mesh.dp}x{mesh.tp}" + (f" pp{mesh.pp}" if mesh.pp > 1 else "") + f"/{model.name}"
        self.batch_rows = mesh.dp                     # rows per call that keep every data-parallel group busy
        self.weight_bytes_per_token = model.weight_bytes_total
        self.prefill_chunk = default_prefill_chunk(model.name)   # rank 0 feeds the mesh chunk by chunk
        self.chunks_batches = not model.name.startswith("onnxruntime")    # runtime/chunked_prefill.py

    def start(self, batch: int, max_seq_len: int) -> None:
        self.session.start(self.mid, batch, max_seq_len)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor,
                last_only: bool = True) -> torch.Tensor:
        return self.session.forward(self.mid, input_ids, position_ids, attention_mask, last_only)

    def mesh_report(self) -> dict:
        """The mesh, and per rank: the weight bytes it holds, peak RSS so far, and the payload bytes it sends per
        decode token (into
        all-reduces / all-gathers, and point-to-point), measured over one decode step of one sequence."""
        self.start(1, 4)
        ids = torch.tensor([[5, 6]])
        self.forward(ids[:, :1], torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1, dtype=torch.long))
        before = self.session.stats()
        self.forward(ids[:, 1:], torch.ones(1, 1, dtype=torch.long), torch.ones(1, 2, dtype=torch.long))
        after = self.session.stats()
        mesh = self.plan.mesh
        ranks = [{**{k: a[k] for k in ("rank", "dp", "stage", "tp", "peak_rss_bytes", "weight_bytes")},
                  "bytes_reduced_per_token": a["bytes_reduced"] - b["bytes_reduced"],
                  "bytes_sent_per_token": a["bytes_sent"] - b["bytes_sent"],
                  "collectives_per_token": a["collectives"] - b["collectives"]} for b, a in zip(before, after)]
        return {"mesh_shape": f"{mesh.dp}x{mesh.tp}", "pp": mesh.pp, "world": mesh.world,
                "threads_per_rank": self.session.threads, "ranks": ranks}


_current: Session | None = None


def current() -> Session | None:
    """The mesh session of this process when it is rank 0 of a mesh run, else None."""
    return _current


def set_current(session: Session | None) -> None:
    global _current
    _current = session


def load_on_mesh(session: Session, path, target: str, options, dtype: str, act_dtype: str):
    """(LoadedModel, DistributedEngine) of a checkpoint loaded across the mesh (rank 0; every rank loads its
    slice). The LoadedModel carries the full model's config and rank 0's own (released) module tree."""
    import sys

    from ..runtime.model_loader import LoadedModel

    from ..runtime.backends import refuse_kv_options

    refuse_kv_options("a mesh run (--mesh_shape / --pp)", options)
    mid, model, plan = session.load(LoadRequest(None if path is None else str(path), target, options, dtype,
                                                act_dtype))
    full = model.full_config
    print(f"[mesh] {plan.describe(full.num_attention_heads, full.num_key_value_heads)}; engine {model.name}",
          file=sys.stderr)
    shard = model.loaded
    loaded = LoadedModel(shard.model, full, shard.family, shard.tokenizer, shard.source, shard.dtype, shard.quant)
    engine = DistributedEngine(session, mid, model, plan)
    if options.prefill_chunk is not None:
        engine.prefill_chunk = options.prefill_chunk
    return loaded, engine
