"""Continuous batching: requests join and leave one engine's running batch between decode steps.

One worker thread owns the engine (every engine call happens on it). The engine is started once with `slots` rows
and a paged KV cache; a request holds one row from admission to its end:

* admission (FIFO): a waiting request takes the lowest free row when its KV blocks fit: every admitted request
  reserves ceil((prompt + max_tokens) / block_size) blocks, so a running request never meets an out-of-blocks error
  (the cache's `--kv_max_blocks` bounds how many run at once instead). Beyond the free rows, at most `max_queue`
  requests wait; one more is refused at once (`QueueFull`, HTTP 429).
* one step = one engine call over all rows: each decoding row feeds its last token; prefilling rows feed their
  prompt's next chunk (`prefill_chunk` tokens; chunk boundaries fixed by the prompt alone), oldest first, while the
  step's prompt tokens stay within a budget (the first prefilling row always goes). Idle rows feed nothing. The
  budget comes from the measured cost of the steps (serving/step_cost.py): a step carrying prompt chunks takes at
  most about twice the time of the same step without them. So a newcomer's prompt at most doubles the time between
  two tokens of a running request, and a long prompt never stops them; on a model whose steps cost mostly a fixed
  overhead, several chunks go per step and rows do not sit idle waiting for their prompt.
* a row's logits are sampled with the request's own sampler (its own seeded generator); its text goes through a
  `TextStream` (stop strings); the row ends at end of sequence, a stop string, max_tokens, or cancellation (a client
  that went away: its row and blocks are freed before the next step), and is released to the cache.

Greedy output does not depend on the other requests: the native engine computes every row from that row's
tokens only (its int8 matmuls, attention and a quantized lm_head are per row; a float lm_head always sees all
`slots` rows, and a GEMM of fixed shape gives a row the same result whatever the other rows hold), a request's
prompt chunks do not
depend on the batch, and its sampler is its own.

Events go to `Ticket.deliver` (called on the worker thread): ("text", str), then one ("done", finish_reason,
usage) or ("error", message).
"""
from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..runtime.sampling import Sampler, SamplingConfig
from .step_cost import StepCost
from .text_stream import TextStream


class QueueFull(Exception):
    pass


@dataclass
class Ticket:
    """One request inside the scheduler."""
    prompt: list[int]
    max_tokens: int
    sampling: SamplingConfig
    stream: TextStream
    deliver: Callable[[tuple], None]
    id: int = 0
    slot: int = -1
    fed: int = 0                            # tokens of this request in the KV cache
    generated: list[int] = field(default_factory=list)
    cancelled: bool = False
    finished: bool = False
    submitted: float = 0.0
    first_token: float | None = None
    ignore_eos: bool = False                # end only at max_tokens or a stop string

    def __post_init__(self) -> None:
        self.sampler = Sampler(self.sampling)             # the request's own generator, seeded by its seed

    def usage(self) -> dict:
        return {"prompt_tokens": len(self.prompt), "completion_tokens": len(self.generated),
                "total_tokens": len(self.prompt) + len(self.generated)}


def kv_blocks(engine) -> tuple[int, int] | None:
    """(block_size, blocks in the pool) of an engine's paged KV cache; None when it is not paged."""
    kv = getattr(engine, "kv", None)
    if kv is None or not getattr(kv, "paged", False):
        return None
    return kv.block_size, len(kv.free) + kv.blocks_in_use


class Scheduler:
    def __init__(self, engine, stop_ids: set[int], slots: int, context: int, max_queue: int,
                 prefill_chunk: int) -> None:
        self.engine, self.stop_ids, self.slots, self.context = engine, stop_ids, slots, context
        self.max_queue, self.prefill_chunk = max_queue, prefill_chunk
        self.cost = StepCost()                      # the prompt tokens a step may carry (serving/step_cost.py)
        self.last_budget = prefill_chunk
        engine.start(slots, context)
        self.blocks = kv_blocks(engine)             # (block size, pool blocks) or None
        self.reserved = 0                           # blocks promised to admitted requests
        self.waiting: list[Ticket] = []
        self.rows: dict[int, Ticket] = {}           # slot -> running request
        self.ids = itertools.count(1)
        self.lock = threading.Condition()
        self.closing = False
        self.steps = 0
        self.thread = threading.Thread(target=self._run, name="edgeawq-scheduler", daemon=True)
        self.thread.start()

    # ---- called from other threads ----
    def blocks_for(self, tokens: int) -> int:
        return 0 if self.blocks is None else -(-tokens // self.blocks[0])

    def capacity_tokens(self) -> int:
        """The most tokens (prompt + max_tokens) one request may hold: the context, and the whole pool."""
        if self.blocks is None:
            return self.context
        return min(self.context, self.blocks[0] * self.blocks[1])

    def submit(self, ticket: Ticket) -> Ticket:
        with self.lock:
            if self.closing:
                raise QueueFull("the server is shutting down")
            if len(self.waiting) >= self.max_queue + self.slots - len(self.rows):   # free rows take requests too
                raise QueueFull(f"{len(self.waiting)} requests are already waiting (--max_queue {self.max_queue})")
            ticket.id, ticket.submitted = next(self.ids), time.perf_counter()
            self.waiting.append(ticket)
            self.lock.notify()
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        """The client went away: the request leaves the queue, or its row is freed before the next step."""
        with self.lock:
            if ticket.finished:
                return
            ticket.cancelled = True
            if ticket in self.waiting:
                self.waiting.remove(ticket)
                ticket.finished = True
            self.lock.notify()

    def status(self) -> dict:
        with self.lock:
            out = {"alive": self.thread.is_alive(), "running": len(self.rows), "waiting": len(self.waiting),
                   "slots": self.slots,
                   "context": self.context, "steps": self.steps, "prompt_tokens_per_step": self.last_budget}
            fitted = self.cost.fit()
            if fitted is not None:                    # the step cost model (serving/step_cost.py)
                out.update(step_fixed_ms=round(fitted[0] * 1e3, 3), step_per_token_ms=round(fitted[1] * 1e3, 4))
            if self.blocks is not None:
                out.update(kv_block_size=self.blocks[0], kv_blocks=self.blocks[1], kv_blocks_reserved=self.reserved,
                           kv_blocks_in_use=self.engine.kv.blocks_in_use)
            return out

    def close(self) -> None:
        with self.lock:
            self.closing = True
            self.lock.notify()
        self.thread.join(timeout=30)

    # ---- the worker thread ----
    def _run(self) -> None:
        while True:
            batch: list[Ticket] = []
            try:
                with self.lock:
                    while not self.closing and not self.waiting and not self.rows:
                        self.lock.wait()
                    if self.closing:
                        break
                    for t in [t for t in self.rows.values() if t.cancelled]:
                        self._release(t)
                    self._admit()
                    if not self.rows:
                        continue
                    batch = sorted(self.rows.values(), key=lambda t: t.id)
                self._step(batch)
            except Exception as exc:                  # a failing step ends its requests, never the server
                self._fail(list(self.rows.values()), exc)
        with self.lock:
            for t in list(self.rows.values()) + self.waiting:
                t.finished = True
                t.deliver(("error", "the server is shutting down"))

    def _admit(self) -> None:
        free = [s for s in range(self.slots) if s not in self.rows]
        while self.waiting and free:
            t = self.waiting[0]
            need = self.blocks_for(len(t.prompt) + t.max_tokens)
            if self.blocks is not None and self.reserved + need > self.blocks[1]:
                break                                  # FIFO: wait until enough blocks are free
            self.waiting.pop(0)
            t.slot = free.pop(0)
            self.reserved += need
            self.rows[t.slot] = t

    def _release(self, t: Ticket) -> None:
        """(lock held) End t's row: its cache blocks go back to the pool."""
        self.engine.release_row(t.slot)
        self._forget(t)

    def _forget(self, t: Ticket) -> None:
        """(lock held) t no longer holds a row or a block reservation."""
        del self.rows[t.slot]
        self.reserved -= self.blocks_for(len(t.prompt) + t.max_tokens)
        t.finished = True

    def _step(self, batch: list[Ticket]) -> None:
        started = time.thread_time()                 # CPU time of this thread: waits for the GIL do not count
        feeds: dict[int, list[int]] = {}
        budget, prefilling = self._prompt_budget(batch), False
        for t in batch:
            if t.fed < len(t.prompt):                 # prompt chunks at fixed boundaries: fed is a multiple of chunk
                n = min(self.prefill_chunk, len(t.prompt) - t.fed)
                if prefilling and n > budget:
                    continue
                feeds[t.slot] = t.prompt[t.fed:t.fed + n]
                budget, prefilling = budget - n, True
            else:
                feeds[t.slot] = [t.generated[-1]]
        T = max(len(f) for f in feeds.values())
        ids = np.zeros((self.slots, T), np.int64)                      # (slots, T), left-padded
        mask = np.zeros((self.slots, T), np.int64)
        positions = np.zeros((self.slots, T), np.int64)
        for slot, f in feeds.items():
            n = len(f)
            ids[slot, T - n:] = f
            mask[slot, T - n:] = 1
            positions[slot, T - n:] = np.arange(self.rows[slot].fed, self.rows[slot].fed + n)
        logits = self.engine.forward(torch.from_numpy(ids), torch.from_numpy(positions), torch.from_numpy(mask),
                                     last_only=True)[:, 0]                                     # (slots, V)
        greedy = logits.argmax(-1).tolist()          # what a temperature-0 sampler picks, for every row at once
        self.steps += 1
        now = time.perf_counter()
        self.cost.add(sum(len(f) for f in feeds.values()), time.thread_time() - started)
        for slot, f in feeds.items():
            t = self.rows[slot]
            t.fed += len(f)
            if t.fed < len(t.prompt):
                continue                              # more prompt to come
            token = greedy[slot] if t.sampling.temperature == 0 else int(t.sampler(logits[slot][None])[0])
            if t.first_token is None:
                t.first_token = now
            self._take(t, token)

    def _prompt_budget(self, batch: list[Ticket]) -> int:
        decoding = sum(t.fed >= len(t.prompt) for t in batch)
        self.last_budget = self.cost.prompt_budget(decoding, self.prefill_chunk, self.slots * self.prefill_chunk)
        return self.last_budget

    def _take(self, t: Ticket, token: int) -> None:
        if token in self.stop_ids and not t.ignore_eos:
            return self._end(t, "stop")
        t.generated.append(token)
        piece = t.stream.push(token)
        if piece:
            t.deliver(("text", piece))
        if t.stream.stopped:
            return self._end(t, "stop")
        if len(t.generated) >= t.max_tokens:
            return self._end(t, "length")

    def _end(self, t: Ticket, reason: str) -> None:
        rest = t.stream.finish()
        if rest:
            t.deliver(("text", rest))
        with self.lock:
            self._release(t)
        t.deliver(("done", reason, t.usage()))

    def _fail(self, batch: list[Ticket], exc: Exception) -> None:
        """End `batch` (every running request) with an error and restart the cache."""
        with self.lock:
            for t in batch:
                if self.rows.get(t.slot) is t:
                    self._forget(t)
                    t.deliver(("error", f"the engine failed on this batch: {exc}"))
            self.engine.start(self.slots, self.context)                   # a clean cache: every row free
